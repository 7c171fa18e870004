"""`python -m qwq.benchmark --child SYSTEM PLAN`: one system's measurements as one JSON line
(the child processes of `qwq bench`). A peer that fails (llama.cpp's tool crashed, say) is
that system's error line, with the peer's own exit status and stderr tail."""

import json
import sys

from qwq.benchmark.cli import child
from qwq.benchmark.llama_cpp import PeerError

if len(sys.argv) == 4 and sys.argv[1] == "--child":
    try:
        print(json.dumps(child(sys.argv[2], json.loads(sys.argv[3]))))
    except PeerError as e:
        print(json.dumps({"error": str(e)}))
else:
    sys.exit("run `qwq bench` (this module's entry point is for its child processes)")
