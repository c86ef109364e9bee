"""Runs scim2-tester's check_server against a Gatehouse SCIM endpoint.

Usage: scim2_conformance.py BASE_URL TOKEN
Prints one line per check; exits 1 when any check is ERROR or CRITICAL (2 on a usage error).
"""

import sys

from httpx2 import Client
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import Status, check_server


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    base, token = sys.argv[1], sys.argv[2]
    http = Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    client = SyncSCIMClient(http)
    results = check_server(client, resource_types=["User", "Group"])
    failed = 0
    for result in results:
        bad = result.status in (Status.ERROR, Status.CRITICAL)
        failed += bad
        print(f"{result.status.name:<10} {result.resource_type or '-':<6} {result.title}"
              + (f": {result.reason}" if result.reason and (bad or result.status == Status.DEVIATION) else ""))
    print(f"scim2-tester: {len(results)} checks, {failed} ERROR or CRITICAL")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
