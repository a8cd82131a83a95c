"""The files of one load balancer's next release, in either mode, from a decided composition.

:mod:`.decide` says which sites a release holds; this module turns that into files: rendered
site configs, kept ones, certificates, the shared config and its certificate list, the release
marker and the manifest. It never drops a site silently: a site that cannot be carried over is
either a note the removal guard counts, or, where dropping would lose a shop that serves, a
:class:`BuildError` before anything is pushed.

Certificate versions (``<root>/certs/<lineage>/<fp16>``, shared mode, and the kept sites of a
shared-mode release in either mode) come from what the load balancer already has (listed at the
start of the run, with the workers' group) or are staged here, checked, and pushed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from certbot_epages.deploy import marker, release, shared
from certbot_epages.deploy.certstore import CertificateError, CertStore
from certbot_epages.deploy.decide import Base, Candidate, Composition, Selection
from certbot_epages.deploy.lineages import Lineage
from certbot_epages.deploy.manifest import FILENAME as MANIFEST
from certbot_epages.deploy.manifest import Manifest, SiteRecord
from certbot_epages.deploy.render import (
    ALL_VARS,
    SUFFIX,
    RenderError,
    TemplateSet,
    lb_cert_dir,
    render_shared,
    render_site,
)
from certbot_epages.errors import EpagesError
from certbot_epages.inventory import Shop
from certbot_epages.names import IMPLICIT_OWNER, is_legacy_owner
from certbot_epages.resources import jinja_env

PEMS = (("fullchain.pem", 0o644), ("privkey.pem", 0o600))
_GONE = "gone"  # a kept site whose template is gone
_VERSION_PATH = re.compile(rb"/certs/([A-Za-z0-9_][A-Za-z0-9._-]*/[0-9a-f]{16})/")


class BuildError(EpagesError):
    """The release cannot be built without losing a site that serves; nothing is pushed."""


@dataclass(frozen=True)
class Settings:
    """What every load balancer's release is built with (the same for a whole run)."""

    templates: TemplateSet
    certs: CertStore
    mode: str  # deploy.mode
    challenge_service: str
    acme_snippet: str
    known: Mapping[str, Lineage]  # every lineage certbot has (a copy of a kept certificate)


@dataclass(frozen=True)
class Target:
    """The load balancer a release is built for, and what it serves now."""

    name: str
    root: str
    listen: str
    base: Base
    base_dir: Path | None  # the live release in the local spool
    on_lb: frozenset[str] = frozenset()  # certificate versions it holds, readable by workers


@dataclass
class Output:
    """A built release's files, and what the deploy must do besides sending them."""

    files: dict[str, release.FileSpec] = field(default_factory=dict)
    push: list[str] = field(default_factory=list)  # certificate versions to send first
    generation: str | None = None
    marker: str | None = None
    manifest: Manifest | None = None  # what files[MANIFEST] holds


class Builder:
    """Builds one load balancer's release (see the module's docstring)."""

    def __init__(self, settings: Settings, target: Target, note: Callable[[str], None]) -> None:
        self.s = settings
        self.t = target
        self.note = note
        self.shared = settings.mode == "shared"
        self.versions: set[str] = set()  # certificate versions the release uses
        self.tree: set[str] = set()  # lineages the release carries in certs/<lineage>/
        self.sources: dict[str, Lineage] = {}  # the composition's new certificates
        self.out = Output()
        self.template_names = frozenset(settings.templates.names())
        self.full = True  # a deploy of every shop (render() says)
        self.unversioned_base = (target.base_dir is None
                                 or not (target.base_dir / shared.VERSIONS).is_file())

    # --- shops to ship -------------------------------------------------------------------------

    def render(self, selection: Selection) -> tuple[dict[str, bytes], dict[str, str]]:
        """Render the candidates that get a file of their own; the sites that cannot ship.

        In shared mode a shop in its template's shared server gets no file, but its values
        and its certificate are checked here, so one bad shop keeps what it serves instead of
        stopping the release of all.
        """
        self.full = selection.full
        rendered: dict[str, bytes] = {}
        failures: dict[str, str] = {}
        for cand in selection.candidates:
            try:
                self._check_candidate(cand)
                if self.shared and not self.s.templates.own_server(cand.shop.template):
                    continue
                rendered[cand.site] = self._render(cand.shop, self._cert_dir(cand.record()))
            except (RenderError, CertificateError, shared.MapValueError) as e:
                failures[cand.site] = (f"{self.t.name}: {cand.shop.domain}: {e}; its current "
                                       "config (if any) stays")
                self.note(failures[cand.site])
        return rendered, failures

    def _check_candidate(self, cand: Candidate) -> None:
        if not self.shared:
            return
        if not self.s.templates.own_server(cand.shop.template):
            problem = (shared.value_problem(self._map_vars(cand.shop.template, cand.shop.vars))
                       or self._missing_vars(cand.shop.template, cand.shop.vars))
            if problem is not None:
                raise shared.MapValueError(problem)
        version = shared.cert_version(cand.lineage.name, cand.lineage.fingerprint)
        if version not in self.t.on_lb and not self.s.certs.has(version):
            try:
                chain, key = cand.lineage.fullchain.read_bytes(), cand.lineage.privkey.read_bytes()
            except OSError as e:
                raise CertificateError(f"cannot read the certificate of {cand.lineage.name}: "
                                       f"{e}") from None
            self.s.certs.stage(cand.lineage.name, chain, key, cand.shop.server_names)

    def _map_vars(self, template: str,
                  values: Mapping[str, str | int | bool] | None) -> dict[str, str | int | bool]:
        """The variables of a shop that go into maps: those its template refers to."""
        used = self.s.templates.used_vars(template)
        if ALL_VARS in used:
            return dict(values or {})
        return {k: v for k, v in (values or {}).items() if k in used}

    def _entry(self, record: SiteRecord,
               values: Mapping[str, str | int | bool] | None = None) -> shared.Entry:
        """The shop of a record as the maps need it (``values``: its map vars, if known)."""
        template = str(record.template)
        if values is None:
            values = self._map_vars(template, record.vars)
        return shared.Entry(record.domain, record.names, template, values, record.lineage,
                            record.fingerprint)

    def _missing_vars(self, template: str, values: Mapping[str, object]) -> str | None:
        required = self.s.templates.required_vars(template)
        if all(var in values for var in required):
            return None
        missing = sorted(required - set(values))
        return (f"template {template!r} uses {', '.join('vars.' + m for m in missing)}, which "
                "the entry does not set")

    def _render(self, shop: Shop, cert_dir: str, source: str | None = None) -> bytes:
        return render_site(self.s.templates, shop, lb_name=self.t.name, lb_root=self.t.root,
                           cert_dir=cert_dir, challenge_service=self.s.challenge_service,
                           acme_challenge=self.s.acme_snippet, listen_address=self.t.listen,
                           source=source).encode()

    def _cert_dir(self, record: SiteRecord) -> str:
        """Where a rendered candidate's certificate is: its version, or the release's tree."""
        if self.shared:
            return shared.cert_dir(self.t.root, record.lineage, record.fingerprint)
        return lb_cert_dir(self.t.root, record.lineage)

    # --- the release -------------------------------------------------------------------------

    def build(self, comp: Composition, rendered: Mapping[str, bytes]) -> Output:
        """Every file of the next release (``comp.sites`` loses what cannot be carried over)."""
        self.sources = dict(comp.lineages)
        out = Output()
        self.out = out
        entries: list[shared.Entry] = []
        gone: dict[str, list[str]] = {}  # template -> shops whose template is gone
        base = self.t.base.known
        for site, record in sorted(comp.sites.items()):
            if site in comp.rendered:
                if site in rendered:
                    out.files[f"sites/{site}"] = release.FileSpec(data=rendered[site])
                else:  # a shop of its template's shared server, checked by render()
                    entries.append(self._entry(record))
                if not self.shared:
                    self.tree.add(record.lineage)
                elif not self._version(record, fresh=True):
                    raise BuildError(f"{self.t.name}: the certificate of {record.lineage} for "
                                     f"{record.domain} was checked but is gone from "
                                     f"{self.s.certs.root}")
                continue
            why = self._keep(site, record, base.sites.get(site, record), comp, entries)
            if why == _GONE:
                gone.setdefault(str(record.template), []).append(record.domain)
            elif why is not None:
                del comp.sites[site]
                comp.dropped[site] = why
                self.note(f"{self.t.name}: {site}: {why}")
        if gone:
            raise BuildError(
                f"{self.t.name}: "
                + "; ".join(f"template {t!r} is gone but {', '.join(sorted(d))} still "
                            "serve(s) with it" for t, d in sorted(gone.items()))
                + "; restore the template (or give these shops another one in the inventory) "
                  "and deploy again; nothing went live")
        if self.shared:
            self._shared_config(entries)
        self._release_certs()
        if self.versions:
            out.files[shared.VERSIONS] = release.FileSpec(
                data="".join(f"{v}\n" for v in sorted(self.versions)).encode())
        self._add_marker(out, comp.sites)
        manifest = Manifest(sites=comp.sites, claims=comp.claims, generation=out.generation,
                            marker=out.marker, mode=self.s.mode)
        out.files[MANIFEST] = release.FileSpec(data=manifest.dumps())
        out.manifest = manifest
        return out

    def _keep(self, site: str, record: SiteRecord, before: SiteRecord, comp: Composition,
              entries: list[shared.Entry]) -> str | None:
        """Carry a site that stays over: None when it is in, else why it cannot be.

        ``record`` is the site as it is to be (with a renewed certificate, say), ``before`` as
        it serves now; when the first cannot be carried over, the second is. ``_GONE``: the
        template it needs is gone.
        """
        why: str | None = None
        for rec in (record, before) if record != before else (record,):
            why = self._carry(site, rec, entries)
            if why is None:
                comp.sites[site] = rec
                return None
        return why

    def _carry(self, site: str, record: SiteRecord, entries: list[shared.Entry]) -> str | None:
        """Carry one version of a kept site over; None when it is in, else why not.

        A shop of a shared server stays a line of the maps (shared mode) or gets a file of its
        own rendered from what the manifest recorded (sites mode, or a certificate version its
        file does not name); a site with a file keeps it, with the certificate it names.
        """
        template = record.template
        known = template is not None and template in self.template_names
        values = (self._map_vars(str(template), record.vars)
                  if known and self.shared and not self.s.templates.own_server(str(template))
                  else None)
        mapped = values is not None and shared.value_problem(values) is None
        missing = self._missing_vars(str(template), record.vars or {}) if mapped else None
        if mapped and missing is None:
            # The common case, 100,000 times in a renewal: no file system access at all.
            if self._version(record, fresh=False):
                entries.append(self._entry(record, values))
                return None
        live = self.t.base_dir
        has_file = live is not None and (live / "sites" / site).is_file()
        if missing is not None:
            return self._outgrown(site, record, has_file, missing, entries)
        if not known:
            if has_file:
                return self._keep_file(site, record)
            return _GONE if template is not None else "its config is missing from the live release"
        if not mapped and (not has_file or self._named_version(site) not in (
                None, shared.cert_version(record.lineage, record.fingerprint))):
            if self._render_kept(site, record):
                return None
        if has_file:
            return self._keep_file(site, record)
        return ("no copy of its certificate "
                f"{shared.cert_version(record.lineage, record.fingerprint)} is on the load "
                "balancer or here")

    def _outgrown(self, site: str, record: SiteRecord, has_file: bool, missing: str,
                  entries: list[shared.Entry]) -> str | None:
        """A kept shop of a shared server whose template now needs a variable it lacks.

        It keeps what it serves: its own file from an earlier run of this, or one rendered
        with the template as the live release stored it. A deploy of only some shops refuses
        (every other shop is kept: the template change is for ``deploy --all``).
        """
        if not self.full:
            raise BuildError(
                f"{self.t.name}: {record.domain}: {missing}; a deploy of only some shops cannot "
                "change the template of the others: run 'certbot-epages deploy --all' (shops "
                "that cannot ship then keep what they serve)")
        if has_file:
            return self._keep_file(site, record)
        stored = self._stored_template(str(record.template))
        if stored is not None and self._version(record, fresh=False):
            cert_dir = shared.cert_dir(self.t.root, record.lineage, record.fingerprint)
            try:
                data = self._render(_shop_of(record), cert_dir, source=stored)
            except RenderError as e:
                self.note(f"{self.t.name}: {site}: {e}")
            else:
                self.out.files[f"sites/{site}"] = release.FileSpec(data=data)
                return None
        self.note(f"{self.t.name}: {record.domain}: {missing}, and the template it was "
                  "deployed with is not stored in the live release: it gets an empty value")
        if self._version(record, fresh=False):
            entries.append(self._entry(record))
            return None
        return (f"no copy of its certificate "
                f"{shared.cert_version(record.lineage, record.fingerprint)} is on the load "
                "balancer or here")

    def _stored_template(self, template: str) -> str | None:
        """The source of ``template`` as the live release stored it, if it did."""
        if self.t.base_dir is None:
            return None
        try:
            return (self.t.base_dir / "templates" / f"{template}{SUFFIX}").read_text()
        except (OSError, UnicodeDecodeError):
            return None

    def _render_kept(self, site: str, record: SiteRecord) -> bool:
        """Render a kept shop's own file from what its record holds; whether that worked."""
        if not self.shared and self._tree_copy(record.lineage):
            cert_dir = lb_cert_dir(self.t.root, record.lineage)
            self.tree.add(record.lineage)
        elif self._version(record, fresh=False):
            cert_dir = shared.cert_dir(self.t.root, record.lineage, record.fingerprint)
        else:
            return False
        try:
            data = self._render(_shop_of(record), cert_dir)
        except RenderError as e:
            self.note(f"{self.t.name}: {site}: {e}")
            return False
        self.out.files[f"sites/{site}"] = release.FileSpec(data=data)
        return True

    def _named_version(self, site: str) -> str | None:
        """The certificate version a live site file names (written in shared mode), if any."""
        assert self.t.base_dir is not None
        if self.unversioned_base:
            return None  # a release that lists no versions has no file naming one
        match = _VERSION_PATH.search((self.t.base_dir / "sites" / site).read_bytes())
        return match[1].decode() if match else None

    def _keep_file(self, site: str, record: SiteRecord) -> str | None:
        """Keep a site's file as it is, with the certificate it names."""
        assert self.t.base_dir is not None
        named = self._named_version(site)
        if named is None:
            self.tree.add(record.lineage)  # it names current/certs/<lineage>
        elif named != shared.cert_version(record.lineage, record.fingerprint):
            return f"its file names the certificate {named}, not the one it is to serve"
        elif not self._version(record, fresh=False):
            return f"no copy of the certificate {named} it names is on the load balancer or here"
        self.out.files[f"sites/{site}"] = release.FileSpec(
            source=self.t.base_dir / "sites" / site)
        return None

    def _tree_copy(self, lineage: str) -> bool:
        """Whether the release can carry ``certs/<lineage>/`` in its own tree."""
        return all(self._tree_source(lineage, pem) is not None for pem, _ in PEMS)

    def _tree_source(self, lineage: str, pem: str) -> Path | None:
        """The file a release's ``certs/<lineage>/<pem>`` is copied from."""
        new = self.sources.get(lineage)
        if new is not None:
            return new.fullchain if pem == "fullchain.pem" else new.privkey
        live = self.t.base_dir
        path = live / "certs" / lineage / pem if live is not None else None
        return path if path is not None and path.is_file() else None

    def _release_certs(self) -> None:
        """``certs/<lineage>/`` of the release for every site file that names one there."""
        lineages = set(self.tree)
        live = self.t.base_dir
        if live is not None and self.t.base.manifest is None and not self.shared:
            # The live manifest was unreadable: keep every certificate it had, whoever used it.
            lineages |= {p.name for p in (live / "certs").glob("*")
                         if p.name != marker.CERT_DIR and p.is_dir()}
        for lineage in sorted(lineages):
            for pem, mode in PEMS:
                source = self._tree_source(lineage, pem)
                if source is not None:
                    self.out.files[f"certs/{lineage}/{pem}"] = release.FileSpec(source=source,
                                                                               mode=mode)

    def _shared_config(self, entries: list[shared.Entry]) -> None:
        root = self.t.root
        default = self.s.certs.default()
        self._use_version(default)
        templates = self.s.templates
        config, refused = shared.plan(entries, root, {
            t: templates.decided_vars(t) for t in {e.template for e in entries}})
        if refused:  # every value was checked before: this is a bug, not a shop's fault
            raise BuildError(f"{self.t.name}: cannot put into the shared config: "
                             + "; ".join(f"{d}: {why}" for d, why in refused.items()))
        lineage, fp = default.split("/")
        parts = [shared.render_maps(config, shared.cert_dir(root, lineage, fp) + "/")]
        for template in sorted({kind[0] for kind in config.kinds}):
            # Kept for shops that a later version of the template cannot render.
            self.out.files[f"templates/{template}{SUFFIX}"] = release.FileSpec(
                data=self.s.templates.source(template).encode())
        for (template, _, _), members in sorted(config.kinds.items()):
            try:
                parts.append(render_shared(
                    templates, template,
                    shared.template_context(template, members, templates.decided_vars(template)),
                    lb_name=self.t.name, lb_root=root,
                    challenge_service=self.s.challenge_service,
                    acme_challenge=self.s.acme_snippet, listen_address=self.t.listen))
            except RenderError as e:
                raise BuildError(f"{self.t.name}: the shared server of template {template!r} "
                                 f"cannot be rendered, so nothing goes live: {e}") from None
        self.out.files[f"sites/{shared.SITE}"] = release.FileSpec(data="".join(parts).encode())

    # --- certificate versions ------------------------------------------------------------------

    def _version(self, record: SiteRecord, *, fresh: bool) -> bool:
        """Make the record's certificate version part of the release; False if no copy exists.

        A version the load balancer holds (readable by its workers) is used as it is; any other
        is staged here from certbot's lineage or the live release, checked, and pushed.
        """
        version = shared.cert_version(record.lineage, record.fingerprint)
        if version not in self.t.on_lb and not self.s.certs.has(version) \
                and not self._stage(record, fresh=fresh):
            return False
        self._use_version(version)
        return True

    def _use_version(self, version: str) -> None:
        self.versions.add(version)
        if version not in self.t.on_lb and version not in self.out.push:
            self.out.push.append(version)

    def _stage(self, record: SiteRecord, *, fresh: bool) -> bool:
        """Stage a checked copy of the record's certificate; False if there is none."""
        copies: list[tuple[Path, Path]] = []
        for lineage in (self.sources.get(record.lineage), self.s.known.get(record.lineage)):
            if lineage is not None and lineage.fingerprint == record.fingerprint:
                copies.append((lineage.fullchain, lineage.privkey))
        live = self.t.base_dir
        if live is not None:
            copies.append((live / "certs" / record.lineage / "fullchain.pem",
                           live / "certs" / record.lineage / "privkey.pem"))
        want = shared.cert_version(record.lineage, record.fingerprint)
        for chain, key in copies:
            try:
                data, key_data = chain.read_bytes(), key.read_bytes()
            except OSError:
                continue
            try:
                staged = self.s.certs.stage(record.lineage, data, key_data, record.names,
                                            check_validity=fresh)
            except CertificateError as e:
                self.note(f"{self.t.name}: the certificate of {record.lineage} for "
                          f"{record.domain} cannot be deployed: {e}")
                continue
            if staged == want:
                return True
        return False

    # --- marker --------------------------------------------------------------------------------

    def _add_marker(self, out: Output, sites: Mapping[str, SiteRecord]) -> None:
        files = out.files
        cert_dir = lb_cert_dir(self.t.root, marker.CERT_DIR)
        files[f"sites/{marker.SITE}"] = release.FileSpec(data=jinja_env().get_template(
            "nginx/epages-release.conf.j2").render(
                generation="", marker_name=marker.NAME, listen_address=self.t.listen,
                ssl_certificate=f"{cert_dir}/fullchain.pem",
                ssl_certificate_key=f"{cert_dir}/privkey.pem").encode())
        out.generation = marker.generation(
            ((path, spec.read()) for path, spec in files.items() if path.startswith("sites/")),
            (record.fingerprint for record in sites.values()))
        previous = self.t.base.manifest
        live = self.t.base_dir
        cert = f"certs/{marker.CERT_DIR}/fullchain.pem"
        key = f"certs/{marker.CERT_DIR}/privkey.pem"
        if (previous is not None and previous.generation == out.generation and previous.marker
                and live is not None and (live / cert).is_file() and (live / key).is_file()):
            files[cert] = release.FileSpec(source=live / cert)
            files[key] = release.FileSpec(source=live / key, mode=0o600)
            out.marker = previous.marker
            return
        pem, key_pem, out.marker = marker.make(out.generation)
        files[cert] = release.FileSpec(data=pem)
        files[key] = release.FileSpec(data=key_pem, mode=0o600)




def _shop_of(record: SiteRecord) -> Shop:
    """The shop a manifest record was rendered from (to render a kept site anew)."""
    implicit = record.owner == IMPLICIT_OWNER.format(domain=record.domain)
    shop_id = None if implicit or is_legacy_owner(record.owner) else record.owner
    return Shop(record.domain, record.names[1:], str(record.template), dict(record.vars or {}),
                shop=shop_id)
