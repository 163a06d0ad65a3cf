"""A gRPC peer for handoff's tests (grpcio, generic handlers, raw bytes: no generated code).

Server:  grpc_peer.py serve NAME             prints "port N" once it listens on 127.0.0.1
Clients: grpc_peer.py unary TARGET SIZE SEED prints "ok NODE SENT GOT": SHA-256s of the payload
                                              sent (SIZE bytes from SEED) and of the echo
         grpc_peer.py stream TARGET N HEX     server streaming: N messages, "msg NODE I HEX"
                                              each, then "end CODE DETAILS"
         grpc_peer.py forever TARGET          server streaming until the server's side ends:
                                              "msg NODE I" each, then "end CODE DETAILS"
         grpc_peer.py bidi TARGET N MS        N messages MS apart, "msg NODE I" for each echo,
                                              then "end CODE DETAILS"

Service `test.Echo`: the server prefixes each answer with its name and a space.
"""
import hashlib
import sys
import time
from concurrent import futures

import grpc

SERVICE = "test.Echo"


def serve(name):
    prefix = name.encode() + b" "

    def unary(request, context):
        return prefix + request

    def stream(request, context):
        count = int(request[:4].decode())
        for i in range(count):
            yield prefix + b"%04d " % i + request[4:]

    def forever(request, context):
        i = 0
        while context.is_active():
            yield prefix + b"%06d" % i
            i += 1
            time.sleep(0.05)

    def bidi(requests, context):
        for r in requests:
            yield prefix + r

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Forever": grpc.unary_stream_rpc_method_handler(forever),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print("port %d" % port, flush=True)
    # Lives until the test kills it (or its stdin closes).
    sys.stdin.read()
    server.stop(0)


def split(answer):
    node, _, rest = answer.partition(b" ")
    return node.decode(), rest


def main():
    mode = sys.argv[1]
    if mode == "serve":
        return serve(sys.argv[2])
    channel = grpc.insecure_channel(sys.argv[2])
    grpc.channel_ready_future(channel).result(timeout=10)
    if mode == "unary":
        call = channel.unary_unary("/%s/Unary" % SERVICE)
        size, seed = int(sys.argv[3]), int(sys.argv[4])
        payload = bytes((n * 7 + seed) % 256 for n in range(size))
        node, rest = split(call(payload, timeout=10))
        sent, got = hashlib.sha256(payload).hexdigest(), hashlib.sha256(rest).hexdigest()
        print("ok %s %s %s" % (node, sent, got), flush=True)
        return
    if mode in ("stream", "forever", "bidi"):
        try:
            if mode == "stream":
                call = channel.unary_stream("/%s/Stream" % SERVICE)
                payload = b"%04d" % int(sys.argv[3]) + bytes.fromhex(sys.argv[4])
                answers = call(payload, timeout=30)
            elif mode == "forever":
                answers = channel.unary_stream("/%s/Forever" % SERVICE)(b"", timeout=60)
            else:
                count, pause = int(sys.argv[3]), int(sys.argv[4]) / 1000.0

                def requests():
                    for i in range(count):
                        yield b"%06d" % i
                        time.sleep(pause)

                answers = channel.stream_stream("/%s/Bidi" % SERVICE)(requests(), timeout=60)
            for i, answer in enumerate(answers):
                node, rest = split(answer)
                print("msg %s %d %s" % (node, i, rest.hex()), flush=True)
            print("end OK -", flush=True)
        except grpc.RpcError as e:
            print("end %s %s" % (e.code().name, e.details()), flush=True)
        return
    raise SystemExit("unknown mode " + mode)


if __name__ == "__main__":
    main()
