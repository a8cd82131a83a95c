"""A stand-in for certbot: runs the hooks it is sent (one JSON line each), timed, in turn.

The manual hooks recognise one certbot run by their parent process, so all four calls of
apex + wildcard come from this one process, as they would from certbot.
"""

import json
import subprocess
import sys
import time

for line in sys.stdin:
    hook, env = json.loads(line)
    started = time.monotonic()
    done = subprocess.run([hook], env=env, capture_output=True, text=True, timeout=120)
    print(json.dumps([time.monotonic() - started, done.returncode, done.stdout, done.stderr]),
          flush=True)
