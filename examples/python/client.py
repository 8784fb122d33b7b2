#!/usr/bin/python3
"""A hyla-server client in Python, with Debian's python3-grpcio and python3-protobuf.

It checks the server's health, prints the model, streams a generation, then continues a session
(create with a prefix, generate on it twice, show that only the new tokens were processed, fork
it, delete both).

Stubs: generated from proto/hyla/v1/hyla.proto. The build makes them
(build/service/python, target hyla_python_stubs); pass that folder with --stubs, put it on
PYTHONPATH, or let this script generate them into a temporary folder with protoc and
grpc_python_plugin (Debian: protobuf-compiler, protobuf-compiler-grpc):

    protoc -I proto --python_out=OUT --grpc_python_out=OUT \
        --plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin proto/hyla/v1/hyla.proto

Session affinity: every call about a session sends the request metadata `session-id: ID`, on
which a load balancer such as deploy/envoy/ hashes to route the session to the replica that holds
its state. The client therefore picks the session id itself (--session, default a random one). A
fork is sent with its PARENT's id as `session-id` (hyla-server creates the child on the parent's
worker, so it must reach the parent's replica), and so is every later call on the fork: the
routing key of a fork family is its first session's id.

Usage:
    examples/python/client.py --server localhost:50051 [--token TOKEN] [--prompt TEXT]
        [--max-tokens N] [--seed S] [--session ID] [--stubs DIR]
Exit status: 0 on success, 1 when a call failed (its gRPC code is printed).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import uuid

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.join(HERE, "..", "..", "proto")


def load_stubs(stubs_dir):
    """Imports hyla.v1 messages and stubs, generating them when they are not importable."""
    if stubs_dir:
        sys.path.insert(0, stubs_dir)
    try:
        from hyla.v1 import hyla_pb2, hyla_pb2_grpc  # noqa: F401
        return hyla_pb2, hyla_pb2_grpc
    except ImportError:
        pass
    out = tempfile.mkdtemp(prefix="hyla_stubs_")
    plugin = shutil.which("grpc_python_plugin") or "/usr/bin/grpc_python_plugin"
    subprocess.run(["protoc", "-I", PROTO_ROOT, "--python_out=" + out, "--grpc_python_out=" + out,
                    "--plugin=protoc-gen-grpc_python=" + plugin,
                    os.path.join(PROTO_ROOT, "hyla", "v1", "hyla.proto")], check=True)
    for pkg in ("hyla", os.path.join("hyla", "v1")):
        open(os.path.join(out, pkg, "__init__.py"), "a").close()
    sys.path.insert(0, out)
    from hyla.v1 import hyla_pb2, hyla_pb2_grpc
    return hyla_pb2, hyla_pb2_grpc


def health_status(channel, service=""):
    """grpc.health.v1.Health/Check without generated stubs (two fields, encoded by hand)."""
    data = service.encode()
    request = (b"\x0a" + bytes([len(data)]) + data) if data else b""
    check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                request_serializer=lambda b: b,
                                response_deserializer=lambda b: b)
    response = check(request, timeout=10)
    # HealthCheckResponse: field 1 (varint) = status; 1 = SERVING.
    status = response[1] if len(response) >= 2 and response[0] == 0x08 else 0
    return {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}.get(status)


def print_usage(label, usage):
    s = usage.state
    print(f"{label}: prompt_tokens={usage.prompt_tokens} reused_tokens={usage.reused_tokens} "
          f"generated_tokens={usage.generated_tokens} ttft={usage.time_to_first_token_seconds:.4f}s "
          f"total={usage.total_seconds:.4f}s state: slot={s.slot_bytes} kv={s.kv_bytes} "
          f"softmax_equivalent={s.softmax_equivalent_bytes} context={s.context_tokens}")


SESSION_ID_METADATA = "session-id"


def with_session(metadata, session_id):
    """The call metadata plus `session-id: session_id` (the load balancer's routing key)."""
    return list(metadata or []) + [(SESSION_ID_METADATA, session_id)]


def generate(stub, pb, metadata, label, **fields):
    """Streams one Generate call; returns (token ids, text, usage)."""
    ids, text, usage = [], [], None
    for response in stub.Generate(pb.GenerateRequest(**fields), metadata=metadata, timeout=120):
        ids.extend(response.token_ids)
        text.append(response.text)
        if response.HasField("finished"):
            usage = response.finished.usage
    print(f"{label}: {len(ids)} tokens: {''.join(text)!r}")
    print_usage(f"{label} usage", usage)
    return ids, "".join(text), usage


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default=os.environ.get("HYLA_SERVER", "localhost:50051"))
    parser.add_argument("--token", default=os.environ.get("HYLA_AUTH_TOKEN", ""))
    parser.add_argument("--prompt", default="The state of a hybrid model is small. ")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--session", default="",
                        help="id of the session to create (default: py-<random>)")
    parser.add_argument("--stubs", default="", help="folder with the generated hyla/v1 stubs")
    args = parser.parse_args()

    pb, pb_grpc = load_stubs(args.stubs)
    metadata = [("authorization", "Bearer " + args.token)] if args.token else None
    try:
        with grpc.insecure_channel(args.server) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            print("health:", health_status(channel))
            stub = pb_grpc.HylaStub(channel)

            info = stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=metadata, timeout=30)
            print(f"model: family={info.family} layers={','.join(info.layer_kinds)} "
                  f"vocab={info.vocab_size} max_context={info.max_context} "
                  f"slot_bytes={info.slot_bytes} kv_block_bytes={info.kv_block_bytes}")

            sampling = pb.SamplingParams(temperature=0.8, top_p=0.95, seed=args.seed)
            stopping = pb.StoppingCriteria(max_new_tokens=args.max_tokens, ignore_eos=True)
            generate(stub, pb, metadata, "generate", text=args.prompt, sampling=sampling,
                     stopping=stopping)

            # A session: the second request processes only its own new tokens. The client names
            # it, and every call about it carries `session-id` (session affinity).
            sid = args.session or "py-" + uuid.uuid4().hex[:16]
            routed = with_session(metadata, sid)
            session = stub.CreateSession(pb.CreateSessionRequest(session_id=sid, text=args.prompt),
                                         metadata=routed, timeout=60)
            print(f"session: id={session.session_id} context_tokens={session.context_tokens}")
            generate(stub, pb, routed, "turn 1", session_id=session.session_id,
                     text="First question? ", sampling=sampling, stopping=stopping)
            _, _, usage = generate(stub, pb, routed, "turn 2", session_id=session.session_id,
                                   text="Second question? ", sampling=sampling, stopping=stopping)
            print(f"turn 2 processed {usage.prompt_tokens} new tokens and reused "
                  f"{usage.reused_tokens} from the session")
            # The fork goes where its parent is: the parent's id as `session-id`, now and for
            # every later call on the fork.
            fork = stub.ForkSession(pb.ForkSessionRequest(session_id=session.session_id,
                                                          new_session_id=sid + "-fork"),
                                    metadata=routed, timeout=60)
            print(f"fork: id={fork.session_id} context_tokens={fork.context_tokens}")
            listed = stub.ListSessions(pb.ListSessionsRequest(), metadata=metadata, timeout=30)
            print("sessions:", ", ".join(s.session_id for s in listed.sessions))
            for child in (fork.session_id, session.session_id):
                stub.DeleteSession(pb.DeleteSessionRequest(session_id=child), metadata=routed,
                                   timeout=30)
            print("deleted both sessions")
    except grpc.RpcError as e:
        print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
