"""`narrator register`, `narrator approve`, `narrator lineage`: a fine-tuned voice in the MLflow model registry.

The flow, for a voice VOICE (registered model `registry.model_prefix + VOICE`, e.g. `narrator-alice`):

1. register: read what the steps wrote (validated consent, prepared segments, features fingerprint, fine-tuned
   exports, evaluation verdict), check the exported files still match the hashes fine-tuning recorded, log an
   MLflow run "register" with the model files, voice.json, the evaluation files and params.yaml as artifacts, and
   create a model version whose source is that run's artifact folder. The version carries the whole lineage as
   tags (below) and gets the alias `challenger`.
2. promote: a version that failed its evaluation gates is never promoted. A passing challenger is promotable
   when there is no champion, or when it beats the champion on `registry.promotion_metric` by more than 0 and at
   least `registry.min_improvement`. Under `registry.deployment_policy: auto` the alias `champion` moves to it at
   once; under `manual` it is tagged `pending_approval=true` and waits for
3. approve: `narrator approve VOICE VERSION --by NAME` moves `champion` to any version that passed its gates
   (also the way to roll back to an earlier version).
4. lineage: `narrator lineage VOICE[@VERSION]` prints the chain consent -> dataset -> code -> params -> base
   checkpoints -> fine-tuning -> evaluation -> registry (+ audit events) -> packaged bento. With --verify it checks
   that nothing changed since registration (`verify_lineage`): the register run's `lineage.json` (the lineage as
   registered, canonical JSON) still hashes to the version's `lineage_sha256` tag and to the digest the audit log's
   "registered" event holds, every lineage tag still has its registered value, and the `champion` alias points at
   the version of the audit log's last promotion or approval. Tags and aliases edited in the MLflow UI, around
   `narrator approve` and the audit log, are named there (exit 2).

Every registration (with its lineage_sha256), promotion and approval, and every packaging (with the bundle's
bundle_uri and bundle_sha256, written by `components/package.py`), is appended to `registry.audit_log`, the
hash-chained log of `narrator/audit.py`; promotions are also kept as version tags promoted_by/promoted_at. What the
audit log holds is what `lineage --verify` trusts over the registry's editable tags and aliases. Voice ids, the
watermark payload codec, aliases and the registry lock live in the library (`narrator/registry.py`), which the
service reads too.

Model-version tags:
    voice, registered_by, registered_at, payload_hex (8 hex digits)
    consent_hash, consent_speaker, consent_organisation, consent_date, consent_scope   (validated report.json)
    dataset_hash, dataset_segments, dataset_holdout_segments, dataset_duration_s       (prepared prepare.json)
    git_commit, git_dirty, params_sha256 (of the sections that shape a voice: components.LINEAGE_SECTIONS)
    base_sovits_sha256, base_gpt_sha256          (pretrained files, or "random-init")
    sovits_sha256, gpt_sha256, sovits_run_id, gpt_run_id   (fine-tuning result.json; run ids "unknown" if not found)
    metric.<name> (every measured evaluation metric), verdict (pass/fail), failed_gates
    watermark_check (the check's outcome and score, e.g. "passed (score 14.2)")
    lineage_sha256 (sha256 of the register run's lineage.json: every tag above as registered, with the model,
                    version, register run and tenant)
    pending_approval (true/false), promoted_by, promoted_at, approved_by, approved_at
    bento, bundle_uri, bundle_sha256 (set by the package step)
    lexicon_sha256 (sha256 of the pronunciation lexicon registered with the version, artifact lexicon/lexicon.yaml;
                    only when it has one: registry.lexicon or --lexicon, over registry.tenant_lexicons[tenant])

dataset_hash is "sha256:" + sha256 of the canonical JSON list of prepared segments (sorted by name: name, text,
language, split, duration_s, and the sha256 of the wav_32k and wav_16k files). It changes when any audio sample,
transcript or train/holdout split changes, and not when the folders move (manifest.json would: it holds paths and
timings).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from components.watermark import WatermarkCheck
from narrator import audit
from narrator.bundle import BUNDLE_SHA256_TAG, BUNDLE_URI_TAG
from narrator.config import Params
from narrator.lexicon import LEXICON_ARTIFACTS, LEXICON_FILE, LEXICON_TAG, Lexicon, parse_lexicon, voice_lexicon
from narrator.log import get_logger
from narrator.registry import (CHALLENGER, CHAMPION, TENANT_TAG, UNKNOWN, RegistryError, actor, alias_version,
                               compose_payload, ensure_registered_model, format_payload, model_name, model_version,
                               move_champion, now, registered_model, registry_client, registry_locked,
                               version_aliases, version_audit)
from narrator.storage import fetch, sha256_file

log = get_logger("register")

RUN_NAME = "register"
RANDOM_INIT = "random-init"  # base checkpoint tag of a model trained from scratch
AUTO_POLICY_ACTOR = "policy:auto"  # promoted_by of an automatic promotion
GIT_TIMEOUT_S = 10
# version tags set after registration (promotion, approval, packaging): extra tags may not use these names
_DECISION_TAGS = ("payload_hex", "pending_approval", "promoted_by", "promoted_at", "approved_by", "approved_at",
                  "bento", "bundle_uri", "bundle_sha256")
LINEAGE_ARTIFACT = "lineage.json"  # the register run's canonical lineage document (see `lineage_document`)
LINEAGE_DIGEST_TAG = "lineage_sha256"  # version tag (and field of the "registered" audit event): its sha256
LINEAGE_FORMAT = 1  # the layout of LINEAGE_ARTIFACT
PARAMS_ARTIFACT = "params.yaml"  # the register run's copy of the settings params_sha256 hashes
# the lineage tags of every registration (besides metric.* and extra tags): one of these appearing on a version
# whose lineage document lacks it was added after registration
LINEAGE_TAG_NAMES = frozenset({
    "voice", "registered_by", "registered_at", "consent_hash", "consent_speaker", "consent_organisation",
    "consent_date", "consent_scope", "dataset_hash", "dataset_segments", "dataset_holdout_segments",
    "dataset_duration_s", "git_commit", "git_dirty", "params_sha256", "base_sovits_sha256", "base_gpt_sha256",
    "sovits_sha256", "gpt_sha256", "sovits_run_id", "gpt_run_id", "verdict", "failed_gates", "watermark_check",
    "payload_hex", LEXICON_TAG})
CHAMPION_EVENTS = ("promoted", "approved")  # the audit events that move the champion alias
PACKAGED_EVENT = "packaged"  # the audit event of the package step: the bundle tags it set


@dataclass
class Registration:
    """The outcome of `register` or `approve` for one model version."""

    voice: str
    model_name: str
    version: int
    aliases: list[str]
    promoted: bool  # `champion` moved to this version in this call
    pending_approval: bool  # promotable, waiting for `narrator approve` (manual policy)
    reason: str  # why it was (not) promoted
    payload_hex: str  # 32-bit watermark payload, 8 hex digits
    run_id: str  # the MLflow run "register" holding the artifacts
    new_version: bool = True  # False: an existing version already held these files and evaluation (nothing done)
    lineage_sha256: str = ""  # sha256 of the version's lineage document (LINEAGE_ARTIFACT of the register run)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, ensure_ascii=False)


@dataclass
class LineageCheck:
    """The outcome of `verify_lineage` for one version: what was compared, and every difference found."""

    voice: str
    model_name: str
    version: int
    lineage_sha256: str | None  # recomputed from the lineage document (None when it could not be read)
    checked: list[str]  # what was compared, one line each
    problems: list[str]  # one line per difference; empty when the lineage holds

    @property
    def intact(self) -> bool:
        return not self.problems

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "intact": self.intact}, indent=1, ensure_ascii=False)

    def to_text(self) -> str:
        head = (f"{self.model_name} version {self.version}: lineage "
                f"{'intact' if self.intact else f'NOT intact ({len(self.problems)} problem(s))'}")
        lines = [head, *(f"  checked  {line}" for line in self.checked),
                 *(f"  PROBLEM  {line}" for line in self.problems)]
        return "\n".join(lines) + "\n"


@dataclass
class Lineage:
    """Where one registered version came from, section by section (every value a string from the registry)."""

    voice: str
    model_name: str
    version: int
    aliases: list[str]
    consent: dict[str, str]
    dataset: dict[str, str]
    code: dict[str, str]
    params: dict[str, str]
    base: dict[str, str]
    finetune: dict[str, str]
    evaluation: dict[str, Any]  # verdict, failed_gates, metrics {name: value}
    registry: dict[str, str]
    audit: list[dict[str, Any]] = field(default_factory=list)  # this version's audit records, oldest first
    audit_problem: str | None = None  # why the audit log failed verification, None when intact
    bento: str | None = None  # set by the package step

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, ensure_ascii=False)

    def to_text(self) -> str:
        c, d, e, r, f = self.consent, self.dataset, self.evaluation, self.registry, self.finetune
        metrics = ", ".join(f"{name} {value:.4g}" for name, value in sorted(e["metrics"].items())) or "none measured"
        dirty = " (with uncommitted changes)" if self.code.get("git_dirty") == "true" else ""
        lines = [
            f"{self.model_name} version {self.version}  [{', '.join(self.aliases) or 'no aliases'}]",
            "chain: consent -> dataset -> code -> params -> base checkpoints -> fine-tuning -> evaluation -> "
            "registry -> bento",
            f"  consent      {c.get('hash')}  speaker {c.get('speaker')!r} of {c.get('organisation')!r}, "
            f"dated {c.get('date')}, scope {c.get('scope')!r}",
            f"  dataset      {d.get('hash')}  {d.get('segments')} segments ({d.get('holdout_segments')} held out), "
            f"{d.get('duration_s')} s",
            f"  code         git {self.code.get('git_commit')}{dirty}",
            f"  params       sha256 {self.params.get('sha256')}",
            f"  base         sovits {self.base.get('sovits_sha256')}; gpt {self.base.get('gpt_sha256')}",
            f"  fine-tuning  sovits {f.get('sovits_sha256')} (MLflow run {f.get('sovits_run_id')}); "
            f"gpt {f.get('gpt_sha256')} (MLflow run {f.get('gpt_run_id')})",
            f"  evaluation   {str(e.get('verdict')).upper()}: {metrics}",
        ]
        if e.get("failed_gates"):
            lines.append(f"               failed gates: {e['failed_gates']}")
        lines.append(f"  registry     version {self.version}, payload {r.get('payload_hex')}, register run "
                     f"{r.get('run_id')}, registered by {r.get('registered_by')} at {r.get('registered_at')}")
        if r.get(LINEAGE_DIGEST_TAG):
            lines.append(f"               lineage sha256 {r[LINEAGE_DIGEST_TAG]} (check it: `narrator lineage "
                         f"{self.voice} --version {self.version} --verify`)")
        if r.get(LEXICON_TAG):
            lines.append(f"               pronunciation lexicon sha256 {r[LEXICON_TAG]}")
        if r.get("promoted_by"):
            lines.append(f"               promoted by {r['promoted_by']} at {r.get('promoted_at')}")
        if r.get("pending_approval") == "true":
            lines.append(f"               pending approval: `narrator approve {self.voice} {self.version} --by NAME`")
        for record in self.audit:
            lines.append(f"  audit        {record.get('time')} {record.get('event')} by {record.get('by')}"
                         + (f": {record['reason']}" if record.get("reason") else ""))
        if self.audit_problem:
            lines.append(f"  audit        WARNING: {self.audit_problem}")
        lines.append(f"  bento        {self.bento or 'not packaged yet'}")
        return "\n".join(lines) + "\n"


# -- what the steps wrote ----------------------------------------------------------------------------------------


def _read_json(path: Path, produced_by: str) -> Any:
    if not path.exists():
        raise RegistryError(f"{path} not found; run `{produced_by}` first (or pass the right folder)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise RegistryError(f"{path} is not valid JSON ({error}); run `{produced_by}` again") from None


def _consent_tags(validated_dir: Path) -> dict[str, str]:
    """The consent record of the validated dataset; registering a voice without one is refused."""
    report = _read_json(validated_dir / "report.json", "narrator validate SOURCE --out VALIDATED_DIR")
    if report.get("verdict") != "accepted" or not report.get("consent_hash"):
        raise RegistryError(f"{validated_dir} holds no accepted, consented dataset (verdict "
                            f"{report.get('verdict')!r}); a voice is only registered from a dataset whose consent "
                            "record passed `narrator validate`")
    consent = report.get("consent") or {}
    return {"consent_hash": report["consent_hash"],
            **{f"consent_{key}": str(consent.get(key) or UNKNOWN) for key in ("speaker", "organisation", "date",
                                                                             "scope")}}


def _segment_audio(prepared_dir: Path, recorded: str, folder: str) -> Path:
    """A prepared wav as recorded in prepare.json, or under PREPARED_DIR/FOLDER when the run folder moved."""
    path = Path(recorded)
    if path.exists():
        return path
    moved = prepared_dir / folder / path.name
    if moved.exists():
        return moved
    raise RegistryError(f"{recorded} (listed in {prepared_dir / 'prepare.json'}) is missing; the dataset hash needs "
                        "every prepared segment: run `narrator prepare` again")


def dataset_tags(prepared_dir: str | Path) -> dict[str, str]:
    """dataset_hash (see the module docstring), segment counts and total duration of a prepared dataset."""
    prepared_dir = Path(prepared_dir)
    report = _read_json(prepared_dir / "prepare.json", "narrator prepare VALIDATED_DIR --out PREPARED_DIR")
    segments = report.get("segments") or []
    if not segments:
        raise RegistryError(f"{prepared_dir / 'prepare.json'} lists no segments; there is no dataset to register")
    rows = [{"name": s["name"], "text": s["text"], "language": s["language"], "split": s.get("split", "train"),
             "duration_s": s["duration_s"],
             "wav_32k_sha256": sha256_file(_segment_audio(prepared_dir, s["wav_32k"], "wav32k")),
             "wav_16k_sha256": sha256_file(_segment_audio(prepared_dir, s["wav_16k"], "wav16k"))}
            for s in sorted(segments, key=lambda s: s["name"])]
    canonical = json.dumps(rows, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return {"dataset_hash": "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest(),
            "dataset_segments": str(len(rows)),
            "dataset_holdout_segments": str(sum(r["split"] == "holdout" for r in rows)),
            "dataset_duration_s": f"{sum(float(r['duration_s']) for r in rows):.3f}"}


def _finetuned_sha256(run_dir: Path, file_name: str, command: str) -> tuple[Path, str]:
    """The exported model file of a fine-tuning run and its sha256, checked against its result.json."""
    summary = _read_json(run_dir / "result.json", f"{command} FEATURES_DIR --out {run_dir}")
    exported = run_dir / file_name
    if "sha256" not in summary:
        raise RegistryError(f"{run_dir / 'result.json'} records no exported model (the run stopped early?); "
                            f"finish `{command}` first")
    if not exported.exists():
        raise RegistryError(f"{exported} is missing; run `{command}` again to export it")
    actual = sha256_file(exported)
    if actual != summary["sha256"]:
        raise RegistryError(f"{exported} has sha256 {actual[:12]}, but fine-tuning exported {summary['sha256'][:12]}: "
                            "the file changed since training; restore it or run the fine-tuning step again")
    return exported, actual


def _evaluation_tags(evaluation_dir: Path) -> tuple[dict[str, str], dict[str, float]]:
    """verdict/failed_gates tags and the measured metrics of `narrator evaluate`."""
    command = "narrator evaluate FEATURES_DIR --sovits ... --gpt ... --out EVALUATION_DIR"
    verdict = _read_json(evaluation_dir / "verdict.json", command)
    report = _read_json(evaluation_dir / "report.json", command)
    metrics = {name: float(value) for name, value in (report.get("metrics") or {}).items()
               if isinstance(value, (int, float)) and not isinstance(value, bool)}
    failures = sum(check.get("status") == "fail" for check in verdict.get("checked", []))
    failed_gates = "; ".join(verdict.get("reasons", [])[:failures])  # evaluate_gates lists failures first
    tags = {"verdict": "pass" if verdict.get("passed") else "fail", "failed_gates": failed_gates,
            **{f"metric.{name}": repr(value) for name, value in metrics.items()}}
    return tags, metrics


def _git_tags() -> dict[str, str]:
    """The commit of the code that runs (this repository), and whether it has uncommitted changes."""
    repo = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                                  timeout=GIT_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {"git_commit": UNKNOWN, "git_dirty": UNKNOWN}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": UNKNOWN if status is None else str(bool(status)).lower()}


def params_yaml(params: Params) -> str:
    """The settings that shaped the voice (`components.LINEAGE_SECTIONS`) as YAML: what params_sha256 hashes and
    the register run keeps as params.yaml. Registry, serving and pipeline settings are left out, so the same
    training gives the same hash whichever front registers it."""
    from components import LINEAGE_SECTIONS
    from narrator.config import params_slice

    return yaml.safe_dump(params_slice(params, LINEAGE_SECTIONS), sort_keys=True, allow_unicode=True)


def _base_tags(params: Params) -> dict[str, str]:
    """sha256 of the base checkpoints fine-tuning started from (random_init takes precedence, as in training)."""
    def one(uri: str | None, random_init: object, key: str) -> str:
        if random_init is not None or not uri:
            return RANDOM_INIT
        return sha256_file(fetch(uri, params.storage, key))

    return {"base_sovits_sha256": one(params.pretrained.sovits, params.finetune_sovits.random_init,
                                      "pretrained.sovits"),
            "base_gpt_sha256": one(params.pretrained.gpt, params.finetune_gpt.random_init, "pretrained.gpt")}


def _finetune_run_id(params: Params, run_name: str, tag: str, sha256: str) -> str:
    """The MLflow run `run_name` that exported `sha256` (components.training.record_export tags it), else
    "unknown"."""
    train = params.training
    if not train.mlflow_tracking_uri:
        return UNKNOWN
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        client = MlflowClient(tracking_uri=train.mlflow_tracking_uri)
        experiment = client.get_experiment_by_name(train.mlflow_experiment)
        if experiment is None:
            return UNKNOWN
        query = f"attributes.run_name = '{run_name}' AND tags.{tag} = '{sha256}'"
        runs = client.search_runs([experiment.experiment_id], filter_string=query,
                                  order_by=["attributes.start_time DESC"], max_results=1)
    except MlflowException as error:
        log.warning("cannot look up the fine-tuning run of %s %s: %s", tag, sha256[:12], error)
        return UNKNOWN
    return runs[0].info.run_id if runs else UNKNOWN


# -- promotion ---------------------------------------------------------------------------------------------------


def _promotion_decision(metrics: dict[str, float], champion, params: Params) -> tuple[bool, str]:
    """Whether a passing challenger beats the champion (a ModelVersion, or None), and why."""
    cfg = params.registry
    metric = cfg.promotion_metric
    if champion is None:
        return True, "no champion yet"
    if metric not in metrics:
        return False, (f"{metric} was not measured, so it cannot be compared with champion v{champion.version}; "
                       "approve it by hand if it should serve")
    held = champion.tags.get(f"metric.{metric}")
    if held is None:
        return False, (f"champion v{champion.version} has no {metric} to compare with; approve by hand if it "
                       "should serve")
    challenger, incumbent = metrics[metric], float(held)
    gain = challenger - incumbent if cfg.promotion_higher_is_better else incumbent - challenger
    verdict = f"{metric} {challenger:.4g} vs champion v{champion.version} {incumbent:.4g}"
    if gain > 0 and gain >= cfg.min_improvement:
        return True, f"{verdict}: better by {gain:.4g}"
    return False, f"{verdict}: not better by more than 0 and at least {cfg.min_improvement:g}"


def recordings_changed(source: str, voice: str, params: Params) -> bool:
    """True when `source`'s fingerprint (`narrator.storage.source_fingerprint`) differs from the
    `source_fingerprint` tag of the voice's newest registered version (or the voice has none): the trigger of
    scheduled retraining."""
    import mlflow

    from narrator.storage import source_fingerprint

    client = registry_client(params)
    current = source_fingerprint(source, params.storage)
    try:
        versions = client.search_model_versions(f"name='{model_name(voice, params)}'")
    except mlflow.exceptions.MlflowException:
        return True
    if not versions:
        return True
    newest = max(versions, key=lambda v: int(v.version))
    changed = newest.tags.get("source_fingerprint") != current
    log.info("%s: recordings %s since version %s", voice, "changed" if changed else "unchanged", newest.version)
    return changed


# -- the steps ---------------------------------------------------------------------------------------------------


def register(voice: str, *, validated_dir: str | Path, prepared_dir: str | Path, features_dir: str | Path,
             sovits_dir: str | Path, gpt_dir: str | Path, evaluation_dir: str | Path, watermark: WatermarkCheck,
             params: Params, extra_tags: dict[str, str] | None = None,
             lexicon_file: str | Path | None = None) -> Registration:
    """Register the fine-tuned voice as a new model version with its lineage, then apply the promotion rule.

    `watermark` is the voice's watermark check (`components.watermark.check_voice`): a voice whose marked output
    did not give the mark back is never registered. `extra_tags` are added to the version's tags (e.g. a
    pipeline's source fingerprint); they may not replace a lineage tag. The voice's pronunciation lexicon
    (`lexicon_file`, else `registry.lexicon`, over its tenant's) is checked against the v2 symbol table, logged
    with the run and tagged `lexicon_sha256`.
    """
    from models.text.lexicon import compile_lexicon

    name = model_name(voice, params)
    if not watermark.passed:
        raise RegistryError(f"{voice}: the watermark check failed ({watermark.summary}, payload read "
                            f"{watermark.payload_read}); a voice whose output does not carry the mark is never "
                            "registered. Run `narrator watermark check` again after fixing the fine-tuning")
    validated_dir, prepared_dir, features_dir = Path(validated_dir), Path(prepared_dir), Path(features_dir)
    sovits_dir, gpt_dir, evaluation_dir = Path(sovits_dir), Path(gpt_dir), Path(evaluation_dir)

    # everything local is read and checked before the registry is touched
    sovits_file, sovits_sha256 = _finetuned_sha256(sovits_dir, "sovits.pth", "narrator finetune-sovits")
    gpt_file, gpt_sha256 = _finetuned_sha256(gpt_dir, "gpt.ckpt", "narrator finetune-gpt")
    voice_file = features_dir / "voice.json"
    _read_json(voice_file, "narrator features PREPARED_DIR --out FEATURES_DIR")
    evaluation_tags, metrics = _evaluation_tags(evaluation_dir)
    lexicon = voice_lexicon(params, lexicon_file)
    compile_lexicon(lexicon)  # a phone outside the v2 table is refused before anything is registered
    params_text = params_yaml(params)
    by, registered_at = actor(), now()
    tags = {"voice": voice, "registered_by": by, "registered_at": registered_at,
            **_consent_tags(validated_dir), **dataset_tags(prepared_dir), **_git_tags(),
            "params_sha256": hashlib.sha256(params_text.encode("utf-8")).hexdigest(), **_base_tags(params),
            "sovits_sha256": sovits_sha256, "gpt_sha256": gpt_sha256,
            "sovits_run_id": _finetune_run_id(params, "finetune-sovits", "sovits_sha256", sovits_sha256),
            "gpt_run_id": _finetune_run_id(params, "finetune-gpt", "gpt_sha256", gpt_sha256),
            **evaluation_tags, "watermark_check": watermark.summary}
    if lexicon is not None:
        tags[LEXICON_TAG] = lexicon.sha256
    clashes = sorted(set(extra_tags or {}) & (set(tags) | set(_DECISION_TAGS) | {LEXICON_TAG, LINEAGE_DIGEST_TAG}))
    if clashes:
        raise RegistryError(f"extra tag(s) {', '.join(clashes)} would replace lineage tags; give them other names")
    tags.update({key: str(value) for key, value in (extra_tags or {}).items()})

    artifacts = {"model": [sovits_file, gpt_file, voice_file],
                 "evaluation": [evaluation_dir / "verdict.json", evaluation_dir / "report.json"]}
    with tempfile.TemporaryDirectory() as tmp, registry_locked(params):
        if lexicon is not None:
            (Path(tmp) / LEXICON_FILE).write_text(lexicon.text, encoding="utf-8")
            artifacts[LEXICON_ARTIFACTS] = [Path(tmp) / LEXICON_FILE]
        return _register_locked(voice, name, tags, metrics, params_text, by, params, artifacts)


def _register_locked(voice: str, name: str, tags: dict[str, str], metrics: dict[str, float], params_text: str,
                     by: str, params: Params, artifacts: dict[str, list[Path]]) -> Registration:
    passed = tags["verdict"] == "pass"
    client = registry_client(params)
    model = ensure_registered_model(client, name, voice)
    _check_tenant(client, model, params.registry.tenant)
    existing = _same_registration(client, name, tags)
    if existing is not None:  # a re-run of the pipeline after a later step failed: nothing new to register
        log.info("%s v%s already holds these files and this evaluation; not registered again", name,
                 existing.version)
        version = int(existing.version)
        return Registration(voice, name, version, version_aliases(client, name, version),
                            existing.tags.get("promoted_by") is not None, existing.tags.get("pending_approval") == "true",
                            f"already registered as version {version} (same fine-tuned files, dataset, consent and "
                            "evaluation); nothing new registered",
                            existing.tags.get("payload_hex", ""), existing.run_id or "", new_version=False,
                            lineage_sha256=existing.tags.get(LINEAGE_DIGEST_TAG, ""))
    voice_id = int(model.tags["voice_id"])
    run_id = _log_register_run(client, params, name, tags, metrics, params_text, artifacts)
    source = client.get_run(run_id).info.artifact_uri
    created = client.create_model_version(name, source, run_id=run_id, tags=tags,
                                          description=f"{voice}: {tags['verdict']}, registered by {by}")
    version = int(created.version)
    payload_hex = format_payload(compose_payload(voice_id, version))
    client.set_model_version_tag(name, str(version), "payload_hex", payload_hex)
    tenant = model.tags.get(TENANT_TAG) or params.registry.tenant or None
    lineage_sha256 = _log_lineage(client, run_id, lineage_document(
        name, voice, version, run_id, tenant, {**tags, "payload_hex": payload_hex}))
    client.set_model_version_tag(name, str(version), LINEAGE_DIGEST_TAG, lineage_sha256)
    champion_version = alias_version(model, CHAMPION)
    champion = client.get_model_version(name, str(champion_version)) if champion_version else None
    client.set_registered_model_alias(name, CHALLENGER, str(version))

    if not passed:
        promotable, reason = False, f"failed its evaluation gates: {tags['failed_gates'] or 'see verdict.json'}"
    else:
        promotable, reason = _promotion_decision(metrics, champion, params)
    pending = promotable and params.registry.deployment_policy == "manual"
    client.set_model_version_tag(name, str(version), "pending_approval", str(pending).lower())
    if pending:
        reason += "; waiting for `narrator approve` (registry.deployment_policy: manual)"
    version_audit(params, "registered", name, voice, version, by, run_id=run_id, verdict=tags["verdict"],
                  payload_hex=payload_hex, promotable=promotable, pending_approval=pending, reason=reason,
                  lineage_sha256=lineage_sha256)
    promoted = promotable and not pending
    if promoted:
        previous = move_champion(client, name, version, AUTO_POLICY_ACTOR)
        version_audit(params, "promoted", name, voice, version, AUTO_POLICY_ACTOR, previous_champion=previous,
               reason=reason)
    log.info("registered %s v%d (%s): %s%s", name, version, tags["verdict"], reason,
             "; promoted to champion" if promoted else "")
    return Registration(voice, name, version, version_aliases(client, name, version), promoted, pending, reason,
                        payload_hex, run_id, lineage_sha256=lineage_sha256)


def _check_tenant(client, model, tenant: str | None) -> None:
    """Give a voice its owning tenant on first registration; refuse to register it for another tenant."""
    if not tenant:
        return
    held = model.tags.get(TENANT_TAG)
    if held is None:
        client.set_registered_model_tag(model.name, TENANT_TAG, tenant)
    elif held != tenant:
        raise RegistryError(f"{model.name} belongs to tenant {held!r}, not {tenant!r}: a voice never moves between "
                            "tenants by registration; use another voice name, or change the tag in the registry "
                            "deliberately")


SAME_REGISTRATION_TAGS = ("sovits_sha256", "gpt_sha256", "dataset_hash", "consent_hash", "verdict", LEXICON_TAG)
# metrics that time the machine the evaluation ran on, not the voice: evaluating the same files again changes them
MACHINE_METRIC_TAGS = ("metric.rtf", "metric.first_audio_s")


def _same_registration(client, name: str, tags: dict[str, str]):
    """The newest version of `name` registered from exactly these fine-tuned files (sha256; exports are
    reproducible, so fine-tuning the same data with the same settings again gives the same files), data, consent,
    verdict and quality metrics (or None). The machine timings (MACHINE_METRIC_TAGS) are not compared."""
    keys = [*SAME_REGISTRATION_TAGS,
            *(key for key in tags if key.startswith("metric.") and key not in MACHINE_METRIC_TAGS)]
    same = [version for version in client.search_model_versions(f"name='{name}'")
            if all(version.tags.get(key) == tags.get(key) for key in keys)]
    return max(same, key=lambda version: int(version.version), default=None)


def _log_register_run(client, params: Params, name: str, tags: dict[str, str], metrics: dict[str, float],
                      params_text: str, artifacts: dict[str, list[Path]]) -> str:
    """The MLflow run "register": lineage tags, evaluation metrics, the model files, evaluation and params."""
    from mlflow.entities import Metric, Param

    from narrator.tracking import ensure_experiment

    experiment_id = ensure_experiment(client, params.training.mlflow_experiment, params.registry.tracking_uri)
    run = client.create_run(experiment_id, run_name=RUN_NAME, tags={**tags, "registered_model": name})
    run_id = run.info.run_id
    try:
        now_ms = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, v, now_ms, 0) for k, v in metrics.items()],
                         params=[Param("voice", tags["voice"]), Param("registered_model", name)])
        for folder, files in artifacts.items():
            for path in files:
                client.log_artifact(run_id, str(path), folder)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / PARAMS_ARTIFACT).write_text(params_text, encoding="utf-8")
            client.log_artifact(run_id, str(Path(tmp) / PARAMS_ARTIFACT))
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


def lineage_document(name: str, voice: str, version: int, run_id: str, tenant: str | None,
                     tags: dict[str, str]) -> dict[str, Any]:
    """What a registration fixes about a version: the registered model, voice, version, register run and owning
    tenant, and every lineage tag as registered (consent, dataset, code, params, base and fine-tuned weights with
    their runs, evaluation metrics and verdict, watermark check and payload, extra tags)."""
    return {"format": LINEAGE_FORMAT, "model": name, "voice": voice, "version": version, "register_run_id": run_id,
            "tenant": tenant, "tags": dict(sorted(tags.items()))}


def canonical_lineage(document: dict[str, Any]) -> bytes:
    """The document as canonical JSON (sorted keys, no spaces, UTF-8): the bytes LINEAGE_ARTIFACT holds."""
    return json.dumps(document, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def lineage_sha256(document: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_lineage(document)).hexdigest()


def _log_lineage(client, run_id: str, document: dict[str, Any]) -> str:
    """Write the lineage document as LINEAGE_ARTIFACT of the register run; returns its sha256."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / LINEAGE_ARTIFACT
        path.write_bytes(canonical_lineage(document))
        client.log_artifact(run_id, str(path))
    return lineage_sha256(document)


def registered_lexicon(voice: str, version: int | None, params: Params) -> Lexicon | None:
    """The lexicon registered with `version` of `voice` (None: its champion, else its newest version), read from
    the register run's artifacts and checked against the version's `lexicon_sha256`; None when it has none."""
    client = registry_client(params)
    name = model_name(voice, params)
    model = registered_model(client, name, voice)
    if version is None:
        version = alias_version(model, CHAMPION) or max(
            (int(v.version) for v in client.search_model_versions(f"name = '{name}'")), default=None)
        if version is None:
            raise RegistryError(f"{name} has no versions yet; register the voice first (`narrator register {voice} "
                                "...`)")
    found = model_version(client, name, version)
    digest = found.tags.get(LEXICON_TAG)
    if not digest:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(client.download_artifacts(found.run_id, f"{LEXICON_ARTIFACTS}/{LEXICON_FILE}", tmp))
        text = local.read_text(encoding="utf-8")
    lexicon = parse_lexicon(text, f"{name} v{version} {LEXICON_FILE}")
    if lexicon.sha256 != digest:
        raise RegistryError(f"the lexicon of {name} v{version} has sha256 {lexicon.sha256[:12]}, but the version was "
                            f"registered with {digest[:12]} ({LEXICON_TAG}): the artifact changed; register the voice "
                            "again with its lexicon")
    return lexicon


def approve(voice: str, version: int, by: str, params: Params) -> Registration:
    """Move `champion` to `version` of `voice` on `by`'s authority (it must have passed its gates)."""
    if not by.strip():
        raise RegistryError("say who approves: --by NAME (recorded in the audit log)")
    with registry_locked(params):
        return _approve_locked(voice, version, by, params)


def _approve_locked(voice: str, version: int, by: str, params: Params) -> Registration:
    client = registry_client(params)
    name = model_name(voice, params)
    model = registered_model(client, name, voice)
    mv = model_version(client, name, version)
    payload_hex = mv.tags.get("payload_hex", "")
    _check_before_approval(client, model, mv, voice, params)
    if mv.tags.get("verdict") != "pass":
        raise RegistryError(f"{name} version {version} failed its evaluation gates "
                            f"({mv.tags.get('failed_gates') or 'no passing verdict recorded'}); it cannot be "
                            "approved. Fix the voice, evaluate and register a new version")
    if alias_version(model, CHAMPION) == version and _audited_champion(_audit_records(params)[0], name) == version:
        return Registration(voice, name, version, version_aliases(client, name, version), False, False,
                            f"version {version} is already the champion", payload_hex, mv.run_id or "")
    previous = move_champion(client, name, version, by)
    approved_at = now()
    client.set_model_version_tag(name, str(version), "approved_by", by)
    client.set_model_version_tag(name, str(version), "approved_at", approved_at)
    replaced = f"replacing champion v{previous}" if previous else "the first champion"
    version_audit(params, "approved", name, voice, version, by, previous_champion=previous, reason=replaced)
    reason = f"approved by {by}, {replaced}"
    log.info("%s v%d approved by %s: now the champion", name, version, by)
    return Registration(voice, name, version, version_aliases(client, name, version), True, False, reason, payload_hex,
                        mv.run_id or "")


def _chosen_version(client, model, name: str, voice: str, version: int | None) -> int:
    """`version`, or (None) the champion, or the latest version when there is none."""
    if version is not None:
        return version
    version = alias_version(model, CHAMPION)
    if version is None:
        versions = [int(v.version) for v in client.search_model_versions(f"name = '{name}'")]
        if not versions:
            raise RegistryError(f"{name} has no versions yet; run `narrator register {voice} ...`")
        version = max(versions)
    return version


def _audit_records(params: Params) -> tuple[list[dict[str, Any]], str | None]:
    """The registry's audit records, oldest first, and why the log failed verification (None when intact)."""
    try:
        return audit.read(params.registry.audit_log, audit.load_key(params.registry.audit_key_file)), None
    except audit.AuditError as error:
        return [], str(error)


def lineage(voice: str, version: int | None, params: Params) -> Lineage:
    """The lineage of `version` of `voice` (None: the champion, or the latest version when there is none)."""
    client = registry_client(params)
    name = model_name(voice, params)
    model = registered_model(client, name, voice)
    version = _chosen_version(client, model, name, voice, version)
    mv = model_version(client, name, version)
    t = mv.tags
    records, problem = _audit_records(params)
    records = [r for r in records if r.get("model") == name and r.get("version") == version]
    return Lineage(
        voice=voice, model_name=name, version=version, aliases=sorted(mv.aliases or []),
        consent={"hash": t.get("consent_hash", UNKNOWN), "speaker": t.get("consent_speaker", UNKNOWN),
                 "organisation": t.get("consent_organisation", UNKNOWN), "date": t.get("consent_date", UNKNOWN),
                 "scope": t.get("consent_scope", UNKNOWN)},
        dataset={"hash": t.get("dataset_hash", UNKNOWN), "segments": t.get("dataset_segments", UNKNOWN),
                 "holdout_segments": t.get("dataset_holdout_segments", UNKNOWN),
                 "duration_s": t.get("dataset_duration_s", UNKNOWN)},
        code={"git_commit": t.get("git_commit", UNKNOWN), "git_dirty": t.get("git_dirty", UNKNOWN)},
        params={"sha256": t.get("params_sha256", UNKNOWN)},
        base={"sovits_sha256": t.get("base_sovits_sha256", UNKNOWN), "gpt_sha256": t.get("base_gpt_sha256", UNKNOWN)},
        finetune={key: t.get(key, UNKNOWN) for key in ("sovits_sha256", "sovits_run_id", "gpt_sha256", "gpt_run_id")},
        evaluation={"verdict": t.get("verdict", UNKNOWN), "failed_gates": t.get("failed_gates", ""),
                    "metrics": {k.removeprefix("metric."): float(v) for k, v in t.items() if k.startswith("metric.")}},
        registry={"run_id": mv.run_id or UNKNOWN, "source": mv.source, **{
            key: t[key] for key in ("payload_hex", "registered_by", "registered_at", "pending_approval",
                                    "promoted_by", "promoted_at", "approved_by", "approved_at", LEXICON_TAG,
                                    LINEAGE_DIGEST_TAG)
            if key in t}},
        audit=records, audit_problem=problem, bento=t.get("bento"))


# -- verification ------------------------------------------------------------------------------------------------


def verify_lineage(voice: str, version: int | None, params: Params) -> LineageCheck:
    """Check `version` of `voice` (None: the champion, else the latest) against what its registration fixed:

    - the lineage document (LINEAGE_ARTIFACT of the register run) hashes to the version's `lineage_sha256` tag and
      to the digest the audit log's "registered" event recorded;
    - every lineage tag of the version still holds the value the document records (an edited, removed or added
      lineage tag is named with its registered and current value), and so do the version's run and the voice's
      tenant;
    - the `champion` alias points at the version the audit log's last promotion or approval of the voice names.

    Edits made in the MLflow UI or through its API, around `narrator approve`, show up here."""
    client = registry_client(params)
    name = model_name(voice, params)
    model = registered_model(client, name, voice)
    version = _chosen_version(client, model, name, voice, version)
    mv = model_version(client, name, version)
    records, audit_problem = _audit_records(params)
    checked: list[str] = []
    problems: list[str] = []
    if audit_problem:
        problems.append(f"the audit log failed verification, so the alias and the digest cannot be checked "
                        f"against it: {audit_problem}")
    digest = _version_lineage(client, model, mv, records, checked, problems)
    if not audit_problem:
        problems += _champion_problems(model, name, voice, records)
        checked.append(f"alias {CHAMPION} against the audit log's promotions and approvals of {name}")
    return LineageCheck(voice, name, version, digest, checked, problems)


def _version_lineage(client, model, mv, records: list[dict[str, Any]], checked: list[str],
                     problems: list[str]) -> str | None:
    """Check one version against its lineage document (digest, tags, run, tenant, params file), adding to `checked`
    and `problems`; returns the document's recomputed sha256 (None when it could not be read)."""
    document = _read_lineage_document(client, mv, problems)
    if document is None:
        return None
    digest = lineage_sha256(document)
    checked.append(f"{LINEAGE_ARTIFACT} of register run {mv.run_id}: sha256 {digest}")
    problems += _digest_problems(mv, digest, records, mv.name, int(mv.version))
    problems += _tag_problems(mv, document)
    problems += _identity_problems(model, mv, document)
    problems += _params_problems(client, mv.run_id, document["tags"].get("params_sha256"))
    problems += _bundle_problems(mv, records)
    checked.append(f"{len(document['tags'])} lineage tags, the register run, the tenant, the run's "
                   f"{PARAMS_ARTIFACT} and the bundle tags against the audit log's packaging")
    return digest


def _bundle_problems(mv, records: list[dict[str, Any]]) -> list[str]:
    """The bundle tags the service fetches by (bundle_uri, bundle_sha256) against the audit log's last packaging of
    this version; bundle tags on a version the audit log never saw packaged were set outside `narrator package`."""
    version = int(mv.version)
    packaged = [r for r in records if r.get("event") == PACKAGED_EVENT and r.get("model") == mv.name
                and r.get("version") == version]
    tags = (BUNDLE_URI_TAG, BUNDLE_SHA256_TAG)
    if not packaged:
        return [f"tag {tag} was set outside `narrator package` ({mv.tags[tag]!r}): the audit log records no "
                f"packaging of version {version}; package it again" for tag in tags if tag in mv.tags]
    last = packaged[-1]
    return [f"tag {tag} was changed after packaging: the audit log's packaging recorded {last.get(tag)!r}, now "
            f"{mv.tags.get(tag)!r}; the service would fetch another bundle. Package version {version} again"
            for tag in tags if mv.tags.get(tag) != last.get(tag)]


def _registered_digest(records: list[dict[str, Any]], name: str, version: int) -> str | None:
    """The lineage_sha256 the audit log's registration of (name, version) recorded, or None."""
    registered = [r for r in records if r.get("event") == "registered" and r.get("model") == name
                  and r.get("version") == version and r.get(LINEAGE_DIGEST_TAG)]
    return registered[-1][LINEAGE_DIGEST_TAG] if registered else None


def _check_before_approval(client, model, mv, voice: str, params: Params) -> None:
    """Refuse to approve a version whose tags no longer match its registered lineage (a verdict edited to "pass"
    in the MLflow UI, say). A version registered before lineage documents (no digest on the version or in the
    audit log) is approved on its tags, with a warning."""
    records, _ = _audit_records(params)
    version = int(mv.version)
    if LINEAGE_DIGEST_TAG not in mv.tags and _registered_digest(records, mv.name, version) is None:
        log.warning("%s v%d has no registered lineage digest (registered before lineage documents): approving it "
                    "on its tags as they are", mv.name, version)
        return
    problems: list[str] = []
    _version_lineage(client, model, mv, records, [], problems)
    if problems:
        raise RegistryError(f"{mv.name} version {version} no longer matches its registered lineage, so it cannot be "
                            f"approved: {'; '.join(problems)}. Restore what changed (`narrator lineage {voice} "
                            f"--version {version} --verify` lists it) or register the voice again")


def _artifact_text(client, run_id: str, path: str) -> str:
    """One small text artifact of a run (downloaded without MLflow's progress bar, which would clutter reports)."""
    import os

    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

    name = MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name
    before = os.environ.get(name)
    os.environ[name] = "false"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return Path(client.download_artifacts(run_id, path, tmp)).read_text(encoding="utf-8")
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _read_lineage_document(client, mv, problems: list[str]) -> dict[str, Any] | None:
    """The lineage document of a version's register run, or None (with the reason added to `problems`)."""
    from mlflow.exceptions import MlflowException

    if not mv.run_id:
        problems.append(f"version {mv.version} names no register run, so it has no lineage document; it was not "
                        "registered by `narrator register`")
        return None
    try:
        document = json.loads(_artifact_text(client, mv.run_id, LINEAGE_ARTIFACT))
    except (MlflowException, OSError) as error:
        problems.append(f"the register run {mv.run_id} has no readable {LINEAGE_ARTIFACT} ({error}): the "
                        "artifact was removed, or the version was registered before lineage documents; register "
                        "the voice again to give it one")
        return None
    except json.JSONDecodeError as error:
        problems.append(f"{LINEAGE_ARTIFACT} of the register run {mv.run_id} is not JSON ({error}): the "
                        "artifact was changed after registration")
        return None
    if isinstance(document, dict) and "format" not in document and "tags" not in document:
        problems.append(f"{LINEAGE_ARTIFACT} of the register run {mv.run_id} holds only tags: the version was "
                        "registered before lineage documents had a digest; register the voice again to give it one")
        return None
    if not isinstance(document, dict) or not isinstance(document.get("tags"), dict):
        problems.append(f"{LINEAGE_ARTIFACT} of the register run {mv.run_id} is not a lineage document (no tags): "
                        "the artifact was changed after registration")
        return None
    return document


def _digest_problems(mv, digest: str, records: list[dict[str, Any]], name: str, version: int) -> list[str]:
    problems = []
    tagged = mv.tags.get(LINEAGE_DIGEST_TAG)
    if tagged is None:
        problems.append(f"version {version} has no {LINEAGE_DIGEST_TAG} tag: it was removed (or the version was "
                        "registered before lineage digests)")
    elif tagged != digest:
        problems.append(f"{LINEAGE_ARTIFACT} hashes to {digest}, but the version's {LINEAGE_DIGEST_TAG} tag is "
                        f"{tagged}: the artifact or the tag was changed after registration")
    audited = _registered_digest(records, name, version)
    if audited is not None and audited != digest:
        problems.append(f"the audit log's registration of version {version} recorded {LINEAGE_DIGEST_TAG} "
                        f"{audited}, but {LINEAGE_ARTIFACT} now hashes to {digest}: the artifact was replaced after "
                        "registration")
    return problems


def _tag_problems(mv, document: dict[str, Any]) -> list[str]:
    """Every lineage tag whose value differs from the registered one, was removed or was added later."""
    recorded: dict[str, str] = document["tags"]
    current = dict(mv.tags)
    problems = []
    for key, value in sorted(recorded.items()):
        if key not in current:
            problems.append(f"tag {key} was removed (registered {value!r})")
        elif current[key] != value:
            problems.append(f"tag {key} was edited: registered {value!r}, now {current[key]!r}")
    for key in sorted(set(current) - set(recorded)):
        if key in LINEAGE_TAG_NAMES or key.startswith("metric."):
            problems.append(f"tag {key} was added after registration ({current[key]!r}); the registered lineage "
                            "has no such tag")
    return problems


def _params_problems(client, run_id: str, registered_sha256: str | None) -> list[str]:
    """The register run's params.yaml still hashes to the params_sha256 the lineage recorded."""
    from mlflow.exceptions import MlflowException

    try:
        text = _artifact_text(client, run_id, PARAMS_ARTIFACT)
    except (MlflowException, OSError) as error:
        return [f"the register run {run_id} has no readable {PARAMS_ARTIFACT} ({error}): it was removed"]
    actual = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if actual != registered_sha256:
        return [f"the register run's {PARAMS_ARTIFACT} hashes to {actual}, but the lineage recorded params_sha256 "
                f"{registered_sha256}: the settings file was replaced after registration"]
    return []


def _identity_problems(model, mv, document: dict[str, Any]) -> list[str]:
    """The document belongs to this version and run, and the voice still has the tenant it was registered for."""
    problems = []
    for field_name, actual in (("model", mv.name), ("version", int(mv.version)), ("register_run_id", mv.run_id)):
        if document.get(field_name) != actual:
            problems.append(f"{LINEAGE_ARTIFACT} names {field_name} {document.get(field_name)!r}, but this is "
                            f"{actual!r}: the version's source or run was changed")
    tenant = model.tags.get(TENANT_TAG) or None
    if document.get("tenant") and tenant != document["tenant"]:
        problems.append(f"the voice's {TENANT_TAG} tag was changed: registered for {document['tenant']!r}, now "
                        f"{tenant!r}")
    return problems


def _champion_moves(records: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """The audit records that moved `name`'s champion alias, oldest first."""
    return [r for r in records if r.get("model") == name and r.get("event") in CHAMPION_EVENTS]


def _audited_champion(records: list[dict[str, Any]], name: str) -> int | None:
    """The version the audit log's last promotion or approval of `name` names (None: there is none)."""
    moves = _champion_moves(records, name)
    return int(moves[-1]["version"]) if moves else None


def _champion_problems(model, name: str, voice: str, records: list[dict[str, Any]]) -> list[str]:
    """The champion alias against the audit log's last promotion or approval of the voice."""
    champion = alias_version(model, CHAMPION)
    expected = _audited_champion(records, name)
    if champion == expected:
        return []
    if expected is None:
        return [f"alias {CHAMPION} points at version {champion}, but the audit log records no promotion or "
                f"approval of {name}: it was moved outside `narrator register`/`narrator approve`; approve the "
                f"version that should serve (`narrator approve {voice} VERSION --by NAME` records it)"]
    last = _champion_moves(records, name)[-1]
    said = (f"the audit log's last {last.get('event')} (by {last.get('by')} at {last.get('time')}) names version "
            f"{expected}")
    if champion is None:
        return [f"alias {CHAMPION} was removed, but {said}; restore it with "
                f"`narrator approve {voice} {expected} --by NAME`"]
    return [f"alias {CHAMPION} points at version {champion}, but {said}: the alias was moved outside `narrator "
            f"approve`; approve the version that should serve (`narrator approve {voice} {expected} --by NAME` moves "
            f"it back; approving version {champion} records that move)"]
