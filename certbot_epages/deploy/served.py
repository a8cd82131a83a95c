"""What each load balancer serves, asked of the load balancers themselves (read-only, no lock).

For ``status`` and for ``sync``'s ownership decisions before it orders anything. Where a load
balancer cannot be asked, the deploy state's copy stands in, and the answer says why.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from certbot_epages.config import DeployConfig, LoadBalancerConfig
from certbot_epages.deploy import manifest, push
from certbot_epages.deploy.manifest import Manifest
from certbot_epages.deploy.spool import Spool, control_dir


@dataclass(frozen=True)
class Served:
    """One load balancer's live release and its manifest."""

    lb: str
    release: str | None
    manifest: Manifest | None
    error: str | None = None  # why the load balancer could not be asked (the spool's copy)


def read_all(deploy: DeployConfig, timeout: float = 30) -> list[Served]:
    """Ask every load balancer at once."""
    cache = Spool(deploy.spool)

    def ask(lb: LoadBalancerConfig) -> Served:
        target = push.Target(lb, control, timeout=timeout)
        try:
            release_id, data = push.read_manifest(target)
            if release_id is None:
                return Served(lb.name, None, None)
            found = None if data is None else manifest.loads(data, f"{lb.name} {release_id}")
            return Served(lb.name, release_id, found)
        except (push.PushError, manifest.ManifestError) as e:
            cached = cache.live(lb.name)
            copy = None
            if cached is not None:
                with contextlib.suppress(OSError, manifest.ManifestError):
                    copy = manifest.loads((cached / manifest.FILENAME).read_bytes())
            return Served(lb.name, None if cached is None else cached.name, copy,
                          f"{e} (shown: the deploy state's copy)")
        finally:
            target.close()

    with control_dir() as control, ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(ask, deploy.load_balancers))
