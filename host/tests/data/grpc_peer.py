"""A real gRPC server and client (Debian's python3-grpcio) for the mesh tests.

Methods take and return raw bytes (no protobuf: the mesh never reads messages):
  /weft.Test/Echo      answers the request, then `|<name>`
  /weft.Test/Flaky     fails UNAVAILABLE the first time it sees a request, then answers it
  /weft.Test/Internal  fails INTERNAL
  /weft.Test/Slow      waits the milliseconds the request names, then answers
  /weft.Test/Stream    streams three messages, then trailing metadata `x-done: yes`
  /weft.Test/Chat      bidirectional: answers each message as it comes, then `|<name>`; the
                       client (PAYLOAD: comma-separated messages) sends each only once the
                       previous one is answered, with `x-stream: yes` (which the proxy-wasm
                       test filter pw-body reads as "pass each piece on")

  grpc_peer.py serve PORT NAME          prints `ready` once listening on 127.0.0.1:PORT
  grpc_peer.py call TARGET AUTHORITY METHOD PAYLOAD [TIMEOUT_S] [COUNT]
                                        prints one JSON line: code, details, replies, trailers
                                        (a unary method is called COUNT times, default 1, on
                                        one channel; every reply is listed)
"""

import json
import queue
import sys
import threading
import time
from concurrent import futures

import grpc


def serve(port, name):
    seen = set()
    lock = threading.Lock()

    def echo(request, context):
        return request + b"|" + name.encode()

    def flaky(request, context):
        with lock:
            first = request not in seen
            seen.add(request)
        if first:
            context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        return request + b"|" + name.encode()

    def internal(request, context):
        context.abort(grpc.StatusCode.INTERNAL, "broken")

    def slow(request, context):
        time.sleep(int(request) / 1000.0)
        return b"slow|" + name.encode()

    def stream(request, context):
        for i in range(3):
            yield b"%d|" % i + name.encode()
        context.set_trailing_metadata((("x-done", "yes"),))

    def chat(requests, context):
        for r in requests:
            yield r + b"|" + name.encode()

    unary = lambda f: grpc.unary_unary_rpc_method_handler(f)
    handler = grpc.method_handlers_generic_handler(
        "weft.Test",
        {
            "Echo": unary(echo),
            "Flaky": unary(flaky),
            "Internal": unary(internal),
            "Slow": unary(slow),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Chat": grpc.stream_stream_rpc_method_handler(chat),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port("127.0.0.1:%d" % port)
    server.start()
    print("ready", flush=True)
    # Until the test kills it, or an hour at most.
    server.wait_for_termination(timeout=3600)


def call(target, authority, method, payload, timeout, count=1):
    channel = grpc.insecure_channel(target, options=(("grpc.default_authority", authority),))
    out = {"code": "OK", "details": "", "replies": [], "trailers": {}}
    try:
        if method == "/weft.Test/Stream":
            stub = channel.unary_stream(method)
            replies = stub(payload.encode(), timeout=timeout)
            for r in replies:
                out["replies"].append(r.decode())
            out["trailers"] = dict(replies.trailing_metadata() or ())
        elif method == "/weft.Test/Chat":
            answered = queue.Queue()

            def messages():
                for m in payload.split(","):
                    yield m.encode()
                    # The next message waits for this one's answer.
                    answered.get(timeout=timeout)

            stub = channel.stream_stream(method)
            replies = stub(messages(), timeout=timeout, metadata=(("x-stream", "yes"),))
            for r in replies:
                out["replies"].append(r.decode())
                answered.put(True)
            out["trailers"] = dict(replies.trailing_metadata() or ())
        else:
            stub = channel.unary_unary(method)
            for _ in range(count):
                reply, c = stub.with_call(payload.encode(), timeout=timeout)
                out["replies"].append(reply.decode())
                out["trailers"] = dict(c.trailing_metadata() or ())
    except grpc.RpcError as e:
        out["code"] = e.code().name
        out["details"] = e.details() or ""
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]), sys.argv[3])
    else:
        timeout = float(sys.argv[6]) if len(sys.argv) > 6 else 10.0
        count = int(sys.argv[7]) if len(sys.argv) > 7 else 1
        call(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], timeout, count)
