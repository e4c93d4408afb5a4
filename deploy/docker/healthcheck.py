#!/opt/orderflow/bin/python
"""Container health check: `orderflow-healthcheck grpc HOST:PORT` or `... http URL`.

grpc asks grpc.health.v1.Health for the server's overall status and succeeds only on
SERVING (a service reports SERVING once its database answers); http succeeds on a 2xx.
It uses nothing the image does not already carry, so a compose file or an orchestrator
without native gRPC probes can check a container from inside it.
"""

from __future__ import annotations

import sys
import urllib.request

TIMEOUT_SECONDS = 3.0


def check_grpc(target: str) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_SECONDS
            )
        except grpc.RpcError as exc:
            print(f"{target}: {exc.code().name}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{target}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def check_http(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as reply:
            print(f"{url}: {reply.status}")
            return 0
    except OSError as exc:  # URLError and HTTPError (non-2xx) are OSErrors
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("grpc", "http"):
        print(__doc__, file=sys.stderr)
        return 2
    kind, where = argv
    return check_grpc(where) if kind == "grpc" else check_http(where)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
