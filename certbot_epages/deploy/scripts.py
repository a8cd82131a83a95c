"""The POSIX sh scripts run on a load balancer, every value quoted (:func:`shlex.quote`).

Pure text: :mod:`.push` runs them (over ssh, or locally). Exit statuses above 90 tell the
caller which lock or switch failed; values were validated before they got here.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence

SWITCH_FAILED = 97  # exit status of a script whose switch of `current` failed
RESTORE_FAILED = 98  # ... whose switch back failed
STEP_BUSY = 96  # ... that did not get the step lock
NOT_OURS = 95  # ... whose run no longer holds the deploy lock
WRONG_GROUP = 94  # ... whose certificate files did not get the workers' group
LOCK_BUSY = 75  # ... of the run lock's session when the lock stayed taken
STEP_LOCK_TIMEOUT = 60  # below Target's timeout: a step never waits longer than its caller


def switch(root: str, target: str | None) -> str:
    """Point ``<root>/current`` at ``releases/<target>`` atomically (rename of a new symlink)."""
    r = shlex.quote(root)
    if target is None:
        return f"rm -f {r}/current"
    link = shlex.quote(f"releases/{target}")
    return f"ln -sfn {link} {r}/.current.new && mv -Tf {r}/.current.new {r}/current"


def step(root: str, body: str, owner: str) -> str:
    """``body`` under the step lock, and only while ``owner`` holds the deploy lock.

    The step lock is fd 8, closed for the commands the body runs (a daemon they start must not
    hold it).
    """
    r = shlex.quote(root)
    busy = shlex.quote(f"a step of another deploy holds {root}/.step.lock")
    gone = shlex.quote("this deploy no longer holds the deploy lock; the step did not run")
    return "\n".join([
        f"mkdir -p {r}/releases || exit 1",
        f"exec 8>>{r}/.step.lock || exit 1",
        f"flock -w {STEP_LOCK_TIMEOUT} 8 || {{ echo {busy}; exit {STEP_BUSY}; }}",
        f"if [ \"$(cat {r}/.deploy.owner 2>/dev/null)\" != {shlex.quote(owner)} ] || "
        f"flock -n {r}/.deploy.lock true; then echo {gone}; exit {NOT_OURS}; fi",
        body,
    ])


def command(argv: Sequence[str], output: str | None = None) -> str:
    """An operator's command without the lock's descriptor, stderr with stdout (or a file)."""
    target = f"> {shlex.quote(output)} 2>&1" if output else "2>&1"
    return f"{shlex.join(argv)} 8>&- {target}"


TRUTH_LIVE, TRUTH_VERSIONS, TRUTH_END = "TRUTH-LIVE", "TRUTH-VERSIONS", "TRUTH-END"
TRUTH_STEP_BUSY = "TRUTH-STEP-BUSY"


def script_hold_lock(root: str, owner: str, timeout: float,
                     group: str | None = None, *, wait: bool = True) -> str:
    """Take ``<root>/.deploy.lock`` and hold it until stdin ends; say ``LOCKED`` once held.

    Once held, the session also says what the load balancer serves, so a run needs no round
    trip of its own for that: under the step lock (a step of a killed run finishes first),
    after ``TRUTH-LIVE`` what :func:`script_prepare` prints, after ``TRUTH-VERSIONS`` what
    :func:`script_list_versions` prints for ``group``, each section ending in ``STATUS=<n>``,
    and ``TRUTH-END`` last (``TRUTH-STEP-BUSY`` instead of the sections when the step lock
    stayed taken). Without ``wait``, a lock held by another run ends the session at once with
    ``LOCK_BUSY``.
    """
    r = shlex.quote(root)
    return "\n".join([
        f"mkdir -p {r} || exit 1",
        f"exec 9>>{r}/.deploy.lock || exit 1",
        "if ! flock -n 9; then",
        *([f"  printf 'BUSY %s\\n' \"$(cat {r}/.deploy.owner.info 2>/dev/null)\"",
           f"  flock -w {int(timeout)} 9 || exit {LOCK_BUSY}"] if wait
          else [f"  exit {LOCK_BUSY}"]),
        "fi",
        f"printf '%s pid %s\\n' {shlex.quote(owner)} $$ > {r}/.deploy.owner.info",
        f"printf '%s\\n' {shlex.quote(owner)} > {r}/.deploy.owner",
        "echo LOCKED",
        # `command`: a failing redirection of a plain `exec` would end the shell, and the lock.
        f"if command exec 8>>{r}/.step.lock && flock -w {STEP_LOCK_TIMEOUT} 8; then",
        f"  echo {TRUTH_LIVE}",
        f"  (mkdir -p {r}/releases && {{\n{script_prepare(root)}\n}})",
        '  echo "STATUS=$?"',
        f"  echo {TRUTH_VERSIONS}",
        f"  (\n{script_list_versions(root, group)}\n)",
        '  echo "STATUS=$?"',
        f"else echo {TRUTH_STEP_BUSY}; fi",
        "exec 8>&-",
        f"echo {TRUTH_END}",
        "exec cat >/dev/null",
    ])


MANIFEST_SUM = ".manifest.sum"  # below the root: "<release>|<manifest's stat>|<sha256>"
_STAT_KEY = "stat -L -c '%d:%i:%s:%z'"  # device, inode, size, change time (ns): any write moves it


def script_prepare(root: str) -> str:
    """Print ``CURRENT=<live release id>`` and, if it has one, ``MANIFEST=<its sha256>``.

    The checksum comes from ``<root>/.manifest.sum`` when that names the live release and the
    manifest's inode, size and change time are still those it recorded (see
    :func:`script_go_live`); else the manifest is hashed, and the result kept there.
    """
    r = shlex.quote(root)
    sums = shlex.quote(f"{root}/{MANIFEST_SUM}")
    return "\n".join([
        f"target=$(readlink {r}/current 2>/dev/null) || target=",
        'id=${target##*/}',
        'printf "CURRENT=%s\\n" "$id"',
        f'if [ -n "$id" ] && [ -d {r}/releases/"$id" ]; then',
        "  echo EXISTS=1",
        f'  m={r}/releases/"$id"/manifest.json',
        '  if [ -f "$m" ]; then',
        f'    key=$({_STAT_KEY} "$m" 2>/dev/null) || key=',
        "    sum= line=",
        f'    [ -n "$key" ] && [ -f {sums} ] && IFS= read -r line < {sums}',
        '    case "$line" in "$id|$key|"*) sum=${line##*|} ;; esac',
        '    case "$sum" in *[!0-9a-f]*) sum= ;; esac',
        '    if [ "${#sum}" != 64 ]; then',
        '      sum=$(sha256sum < "$m") && sum=${sum%% *} || sum=',
        f'      [ -n "$sum" ] && [ -n "$key" ] && printf "%s|%s|%s\\n" "$id" "$key" "$sum" '
        f"2>/dev/null > {sums}.new && mv -f {sums}.new {sums} 2>/dev/null",
        "    fi",
        '    [ -n "$sum" ] && printf "MANIFEST=%s\\n" "$sum"',
        "  fi",
        "fi",
    ])


def _remember_manifest_sum(root: str, release: str, sha256: str) -> str:
    """Record a release's manifest checksum (computed where it was built) for script_prepare."""
    sums = shlex.quote(f"{root}/{MANIFEST_SUM}")
    m = shlex.quote(f"{root}/releases/{release}/manifest.json")
    return (f"key=$({_STAT_KEY} {m} 2>/dev/null) && printf '%s|%s|%s\\n' "
            f"{shlex.quote(release)} \"$key\" {shlex.quote(sha256)} 2>/dev/null > {sums}.new "
            f"&& mv -f {sums}.new {sums} 2>/dev/null || rm -f {sums}.new {sums}")


def script_read_manifest(root: str) -> str:
    """Print ``CURRENT=<id>``, a line ``--``, then the live release's manifest (for status)."""
    r = shlex.quote(root)
    return "\n".join([
        f"target=$(readlink {r}/current 2>/dev/null) || target=",
        'printf "CURRENT=%s\\n--\\n" "${target##*/}"',
        f"cat {r}/current/manifest.json 2>/dev/null",
        "exit 0",
    ])


VERSION_LINE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*/[0-9a-f]{16}")
NO_GROUP, NOT_IN_GROUP = 4, 5


def script_list_versions(root: str, group: str | None) -> str:
    """Print the certificate versions below ``<root>/certs`` (``<lineage>/<fp16>``).

    A version counts when it has both files. With ``group``: first check that the group exists
    and that the deploy user may give files to it (root, or a member), then count only files
    of that group, readable by it and by no one else (what ``Target.push_certs`` makes), so a
    version with another group or mode is sent again.
    """
    r = shlex.quote(root)
    lines = []
    select = ""
    if group is not None:
        g = shlex.quote(group)
        lines += [
            f"getent group {g} >/dev/null || exit {NO_GROUP}",
            f'[ "$(id -u)" = 0 ] || id -nG | tr " " "\\n" | grep -qxF -- {g} '
            f"|| {{ id -un; exit {NOT_IN_GROUP}; }}",
        ]
        select = f"-group {g} -perm -0040 ! -perm -0004 "
    lines += [
        f"cd {r}/certs 2>/dev/null || exit 0",
        "find . -mindepth 3 -maxdepth 3 -type f \\( -name fullchain.pem -o -name privkey.pem "
        f"\\) {select}-printf '%h\\n' | awk 'n[$0]++ == 1'",
    ]
    return "\n".join(lines)


def script_test(root: str, candidate: str, live: str | None, test: Sequence[str],
                group_of: tuple[str, str] | None = None) -> str:
    """Point ``current`` at the candidate, run the test, point it back.

    Nothing reloads meanwhile, so the running nginx never loads the candidate unless it passes
    on every load balancer. A deploy killed meanwhile does not stop the script (hang-ups and
    broken pipes are ignored, the output waits in a file), so `current` is always put back;
    an interrupt or termination of the script itself puts it back too.

    ``group_of``: (a file, its group): first check that the file has that group (a key just
    sent for the workers), else print the group it has and exit with ``WRONG_GROUP``.
    """
    restore = switch(root, live)
    out = f"{root}/.test-output"
    check = []
    if group_of is not None:
        path, group = (shlex.quote(x) for x in group_of)
        check = [f"g=$(stat -c %G {path} 2>/dev/null) || {{ echo '?'; exit {WRONG_GROUP}; }}",
                 f'[ "$g" = {group} ] || {{ echo "$g"; exit {WRONG_GROUP}; }}']
    return "\n".join([
        *check,
        "trap '' HUP PIPE",
        f"trap '{restore.replace(chr(39), chr(39) + chr(92) + chr(39) + chr(39))}; exit 99' "
        "INT TERM",
        switch(root, candidate) + f" || exit {SWITCH_FAILED}",
        command(test, out),
        "status=$?",
        "trap - INT TERM",
        restore + f" || exit {RESTORE_FAILED}",
        f"cat {shlex.quote(out)}; rm -f {shlex.quote(out)}",
        "exit $status",
    ])


def script_go_live(root: str, candidate: str, reload: Sequence[str],
                   manifest_sha256: str | None = None) -> str:
    """Switch ``current`` to the candidate and reload.

    With ``manifest_sha256`` (of the candidate's manifest, as built) the next lock session
    need not hash the manifest (see :func:`script_prepare`).
    """
    remember = ([_remember_manifest_sum(root, candidate, manifest_sha256)]
                if manifest_sha256 is not None and re.fullmatch(r"[0-9a-f]{64}", manifest_sha256)
                else [])
    return "\n".join([f"{switch(root, candidate)} || exit {SWITCH_FAILED}",
                      *remember, command(reload)])


def script_roll_back(root: str, live: str | None, reload: Sequence[str]) -> str:
    """Switch ``current`` back to the release that served before, and reload."""
    return f"{switch(root, live)} || exit {RESTORE_FAILED}\n{command(reload)}"


def script_discard(root: str, release: str, live: str | None) -> str:
    """Remove a candidate that never went live; first put `current` back if it points there."""
    r = shlex.quote(root)
    return "\n".join([
        f'if [ "$(readlink {r}/current 2>/dev/null)" = {shlex.quote(f"releases/{release}")} ]; '
        f"then {switch(root, live)}; fi",
        f"rm -rf {shlex.quote(f'{root}/releases/{release}')}",
    ])


def script_prune_certs(root: str) -> str:
    """Delete certificate versions that no release on the load balancer lists any more."""
    r = shlex.quote(root)
    return "\n".join([
        f"cd {r}/certs 2>/dev/null || exit 0",
        "used=$(mktemp) && have=$(mktemp) || exit 1",
        f"cat {r}/releases/*/certs.list 2>/dev/null | sort -u > \"$used\"",
        "find . -mindepth 2 -maxdepth 2 -type d | sed 's|^\\./||' "
        "| grep -E '^[A-Za-z0-9_][A-Za-z0-9._-]*/[0-9a-f]{16}$' | sort > \"$have\"",
        'comm -23 "$have" "$used" | while read -r v; do rm -rf -- "$v"; done',
        'rm -f "$used" "$have"',
        "find . -mindepth 1 -maxdepth 1 -type d -empty -delete",
    ])


def script_prune(root: str, keep: int, protect: Sequence[str]) -> str:
    """Delete the oldest releases beyond ``keep``, sparing the ``protect`` ids."""
    r = shlex.quote(root)
    spared = " ".join(shlex.quote(p) for p in protect) or "''"
    return "\n".join([
        f"cd {r}/releases || exit 0",
        f"ls -1 | grep -E '^[0-9]{{8}}T[0-9]{{6}}Z-[0-9a-f]{{4}}$' | sort | head -n -{int(keep)} |",
        "while read -r id; do",
        f"  case \" {spared} \" in *\" $id \"*) continue ;; esac",
        '  rm -rf -- "$id"',
        "done",
    ])
