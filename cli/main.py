"""The `narrator` command line: one thin front over the pipeline steps in `components/`.

Exit status: 0 success, 2 the input was refused (the message says why and what to do), 1 any other error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from narrator.errors import NarratorError
from narrator.threads import configure_waiting

configure_waiting()  # before anything loads torch: libgomp reads how its idle workers wait only then

if TYPE_CHECKING:
    from narrator.config import Params

EPILOG = """\
examples:
  narrator validate recordings/alice --out runs/alice/validated
  narrator validate s3://voices/alice --out runs/alice/validated
  narrator prepare runs/alice/validated --out runs/alice/prepared
  narrator prepare s3://voices/runs/alice/validated --out s3://voices/runs/alice/prepared   # any path: s3:// too
  narrator features runs/alice/prepared --out runs/alice/features
  narrator finetune-gpt runs/alice/features --out runs/alice/gpt
  narrator finetune-sovits runs/alice/features --out runs/alice/sovits
  narrator evaluate runs/alice/features --sovits runs/alice/sovits/sovits.pth --gpt runs/alice/gpt/gpt.ckpt \
      --out runs/alice/evaluation
  narrator watermark embed speech.wav marked.wav --payload 00c0ffee
  narrator watermark detect marked.wav
  narrator watermark check runs/alice/features --sovits runs/alice/sovits/sovits.pth --gpt runs/alice/gpt/gpt.ckpt \
      --out runs/alice/watermark
  narrator register alice --validated runs/alice/validated --prepared runs/alice/prepared \
      --features runs/alice/features --sovits runs/alice/sovits --gpt runs/alice/gpt \
      --evaluation runs/alice/evaluation --watermark runs/alice/watermark
  narrator approve alice 3 --by "Dana Reviewer"
  narrator lexicon check book.md --voice alice --lexicon lexicon.yaml
  narrator lineage alice@3
  narrator lineage alice --verify           # exit 2 when tags or the champion alias changed outside narrator
  narrator onboard recordings/alice --voice alice
  narrator pipeline compile onboard --out onboard.yaml
  narrator pipeline run onboard --host http://kubeflow:8888 --source s3://voices/alice --voice alice
  narrator pipeline schedule retrain --host http://kubeflow:8888 --source s3://voices/alice --voice alice
  narrator keys create --tenant acme --voices alice,bob
  narrator serve --port 3000
  narrator audit verify serving-audit.jsonl  # or postgresql://USER@HOST/DB?table=serving_audit
  narrator package alice                   # the champion's bento
  narrator narrate book.md --voice alice --out runs/alice/book
  narrator demo --out demo
  narrator config --defaults

Settings come from ./params.yaml (or --params FILE); override one with --set section.key=value.
"""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", metavar="FILE", help="params file (default: ./params.yaml, else built-in defaults)")
    parser.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", default=[],
                        help="override one setting, e.g. --set validate.min_clip_s=2 (repeatable)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", default="text", choices=["text", "json"], help="json: one object per line")


def _verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="local runs: stream kfp's and every step's logs instead of one line per step (the full "
                             "log is always kept under pipeline.pipeline_root/logs/)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="narrator", description="Turn one minute of a narrator's consented speech into a production voice.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"narrator {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("validate", help="check recordings, transcripts and consent; quarantine rejected clips",
                       description="Validate a narrator's recordings before training. Writes report.json, "
                                   "report.html, accepted.list and quarantine/ into --out. Sources are never "
                                   "modified. Exit 0: accepted; 2: dataset refused, or --out unusable (read-only, full, "
                                   "busy with another run); 1: internal error.")
    p.add_argument("source", help="folder or s3://bucket/prefix with audio, transcripts and consent.yaml")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    _common(p)
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("prepare", help="trim, cut and normalise accepted clips into 32 kHz and 16 kHz training audio",
                       description="Prepare the accepted clips of a validated dataset: trim silence, cut long "
                                   "recordings at pauses, normalise loudness, write wav32k/, wav16k/ and "
                                   "prepared.list. Re-running skips finished clips.")
    p.add_argument("validated", metavar="VALIDATED_DIR", help="the --out folder of `narrator validate`")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    _common(p)
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("features", help="phones, BERT, HuBERT, semantic tokens and spectrograms per prepared clip",
                       description="Compute the GPT-SoVITS training features of every prepared segment into "
                                   "--out (manifest.json + entries/NAME/*.pt) and the voice fingerprint. Needs "
                                   "pretrained.sovits and pretrained.hubert_dir (and pretrained.bert_dir for "
                                   "Chinese) in params.yaml. Re-running skips finished clips.")
    p.add_argument("prepared", metavar="PREPARED_DIR", help="the --out folder of `narrator prepare`")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    _common(p)
    p.set_defaults(func=_cmd_features)

    p = sub.add_parser("finetune-gpt", help="fine-tune the text-to-semantic GPT on a narrator's features",
                       description="Fine-tune the GPT (stage 1) from pretrained.gpt (or finetune_gpt.random_init) on "
                                   "the output of `narrator features`. Checkpoints every training."
                                   "checkpoint_every_steps into --out; re-running resumes from the last one. Writes "
                                   "gpt.ckpt (official container) and result.json; logs to MLflow.")
    p.add_argument("features", metavar="FEATURES_DIR", help="the --out folder of `narrator features`")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder (checkpoints, gpt.ckpt)")
    _common(p)
    p.set_defaults(func=_cmd_finetune_gpt)

    p = sub.add_parser("finetune-sovits", help="fine-tune the SoVITS synthesizer on a narrator's features",
                       description="Fine-tune SoVITS (stage 2) from pretrained.sovits and pretrained."
                                   "sovits_discriminator (or finetune_sovits.random_init) on the output of `narrator "
                                   "features`, with the official losses and schedule. Checkpoints into --out; "
                                   "re-running resumes. Writes sovits.pth (official container), the discriminator, "
                                   "samples/*.wav and result.json; logs to MLflow. Several GPUs: run it under "
                                   "`torchrun --nproc_per_node N --no-python narrator finetune-sovits ...`.")
    p.add_argument("features", metavar="FEATURES_DIR", help="the --out folder of `narrator features`")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder (checkpoints, sovits.pth)")
    _common(p)
    p.set_defaults(func=_cmd_finetune_sovits)

    p = sub.add_parser("evaluate", help="measure a fine-tuned voice against held-out data; pass or fail its gates",
                       description="Speak the held-out transcripts and the fixed evaluation sentences with the voice, "
                                   "measure speaker similarity, WER/CER, MCD, F0, duration robustness, speed and the "
                                   "watermark, and apply evaluate.gates. Writes report.json, report.html, "
                                   "verdict.json and samples/ into --out. Exit 0: passed; 2: a gate failed.")
    p.add_argument("features", metavar="FEATURES_DIR", help="the --out folder of `narrator features`")
    p.add_argument("--sovits", required=True, metavar="PTH", help="the voice's SoVITS file (finetune-sovits output)")
    p.add_argument("--gpt", required=True, metavar="CKPT", help="the voice's GPT file (finetune-gpt output)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--lexicon", metavar="FILE", help="the voice's pronunciation lexicon (lexicon.yaml) to read with")
    _common(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("watermark", help="embed a 32-bit payload in audio, or detect it and read it back",
                       description="Keyed, inaudible audio watermark (500 Hz - 4 kHz) that survives mp3/ogg, "
                                   "resampling, noise, gain, low-pass and cutting. The key comes from "
                                   "$NARRATOR_WATERMARK_KEY or the file named by $NARRATOR_WATERMARK_KEY_FILE.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("embed", help="write a marked copy of an audio file",
                           description="Embed --payload (8 hex digits) into IN and write OUT (.wav or .flac, same "
                                       "rate and channels).")
    a.add_argument("input", metavar="IN", help="audio file (wav, flac, mp3, ogg, m4a)")
    a.add_argument("output", metavar="OUT", help="marked audio to write (.wav or .flac)")
    which = a.add_mutually_exclusive_group(required=True)
    which.add_argument("--payload", metavar="HEX", help="32-bit payload as 8 hex digits, e.g. 00c0ffee")
    which.add_argument("--voice", metavar="VOICE@VERSION", help="the payload of a registered voice version, looked "
                                                               "up in the registry (e.g. alice@3)")
    _common(a)
    a.set_defaults(func=_cmd_watermark_embed)
    a = actions.add_parser("detect", help="look for the mark; print JSON {detected, payload, score}",
                           description="Look for the mark in IN and print {\"detected\", \"payload\", \"score\"} as "
                                       "JSON (payload: 8 hex digits, or null when it cannot be read; it needs about "
                                       "10 s of marked audio). Exit 0 whether or not a mark is found; 1 when the file "
                                       "cannot be read.")
    a.add_argument("input", metavar="IN", help="audio file (wav, flac, mp3, ogg, m4a)")
    a.add_argument("--lookup", action="store_true", help="also name the voice and version the payload belongs to "
                                                         "(looked up in the registry)")
    _common(a)
    a.set_defaults(func=_cmd_watermark_detect)
    a = actions.add_parser("check", help="check that a fine-tuned voice's marked output gives the mark back",
                           description="The pipeline's watermark check: the voice speaks the evaluation sentences "
                                       "(10 s or more), the result is marked with the production key, and a 3 s "
                                       "excerpt must show the mark and the whole must give the payload back. Writes "
                                       "sample.wav and watermark.json into --out. Exit 0: passed; 1: not found.")
    a.add_argument("features", metavar="FEATURES_DIR", help="the --out folder of `narrator features`")
    a.add_argument("--sovits", required=True, metavar="PTH", help="the voice's SoVITS file (finetune-sovits output)")
    a.add_argument("--gpt", required=True, metavar="CKPT", help="the voice's GPT file (finetune-gpt output)")
    a.add_argument("--payload", metavar="HEX", help="payload to embed (default: the evaluation payload 4e415252)")
    a.add_argument("--out", required=True, metavar="DIR", help="output folder")
    _common(a)
    a.set_defaults(func=_cmd_watermark_check)

    p = sub.add_parser("register", help="register an evaluated voice in the MLflow model registry (and promote it)",
                       description="Log the fine-tuned voice with its lineage (consent, dataset hash, code commit, "
                                   "params, base checkpoints, fine-tuning hashes, evaluation) as a new version of "
                                   "the registered model registry.model_prefix + VOICE with the alias challenger. A "
                                   "version that passed its gates and beats the champion on registry."
                                   "promotion_metric becomes champion (registry.deployment_policy auto) or waits "
                                   "for `narrator approve` (manual). Prints the registration as JSON.")
    p.add_argument("voice", metavar="VOICE", help="voice name, e.g. alice (letters, digits, '.', '_', '-')")
    p.add_argument("--validated", required=True, metavar="DIR", help="the --out folder of `narrator validate`")
    p.add_argument("--prepared", required=True, metavar="DIR", help="the --out folder of `narrator prepare`")
    p.add_argument("--features", required=True, metavar="DIR", help="the --out folder of `narrator features`")
    p.add_argument("--sovits", required=True, metavar="DIR", help="the --out folder of `narrator finetune-sovits`")
    p.add_argument("--gpt", required=True, metavar="DIR", help="the --out folder of `narrator finetune-gpt`")
    p.add_argument("--evaluation", required=True, metavar="DIR", help="the --out folder of `narrator evaluate`")
    p.add_argument("--watermark", required=True, metavar="DIR", help="the --out folder of `narrator watermark check` "
                                                                   "(its watermark.json is recorded; a failed check "
                                                                   "is refused)")
    p.add_argument("--tag", metavar="KEY=VALUE", action="append", default=[],
                   help="an extra tag on the model version, e.g. source_fingerprint=abc123 (repeatable)")
    p.add_argument("--out", metavar="FILE", help="also write the registration JSON to FILE")
    p.add_argument("--lexicon", metavar="FILE", help="the voice's pronunciation lexicon (lexicon.yaml), registered "
                                                    "with the version (default: registry.lexicon)")
    _common(p)
    p.set_defaults(func=_cmd_register)

    p = sub.add_parser("lexicon", help="check a manuscript for words the front-end guesses; validate a lexicon",
                       description="Pronunciation lexicons (docs/lexicon.md): lexicon.yaml maps words to ARPAbet "
                                   "phones, pinyin or a respelling; a voice version carries one.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("check", help="list the words of a manuscript the front-end has to guess",
                           description="List the words the front-end guesses (not in the dictionary nor the "
                                       "lexicon, acronyms, ambiguous numbers), each with its count, first context "
                                       "and the phones it chose, so an editor can fix them in a lexicon first.")
    a.add_argument("manuscript", metavar="MANUSCRIPT", help="the manuscript (.txt or .md)")
    a.add_argument("--voice", metavar="VOICE[@VERSION]", help="apply this voice's registered lexicon (its champion "
                                                             "or newest version without @VERSION)")
    a.add_argument("--lexicon", metavar="FILE", help="a lexicon.yaml to apply (over the voice's)")
    a.add_argument("--language", default="auto", choices=["auto", "en", "zh"], help="language of text without words")
    a.add_argument("--json", action="store_true", help="print JSON instead of text")
    _common(a)
    a.set_defaults(func=_cmd_lexicon_check)
    a = actions.add_parser("validate", help="check a lexicon.yaml against the v2 symbol table",
                           description="Exit 0: every entry is well formed and every phone is in the v2 symbol "
                                       "table; 2: the error names the word, the phone and the nearest valid symbols.")
    a.add_argument("file", metavar="FILE", help="the lexicon.yaml")
    _common(a)
    a.set_defaults(func=_cmd_lexicon_validate)

    p = sub.add_parser("approve", help="make a registered version the champion (manual deployment policy)",
                       description="Move the alias champion to VERSION of VOICE, recording who approved it in "
                                   "the audit log and as version tags. Only a version that passed its evaluation "
                                   "gates can be approved; approving an earlier version rolls back.")
    p.add_argument("voice", metavar="VOICE", help="voice name, e.g. alice")
    p.add_argument("version", metavar="VERSION", type=int, help="model version number, e.g. 3")
    p.add_argument("--by", required=True, metavar="NAME", help="who approves (recorded in the audit log)")
    _common(p)
    p.set_defaults(func=_cmd_approve)

    p = sub.add_parser("lineage", help="show where a registered voice version came from",
                       description="Print the chain consent -> dataset -> code -> params -> base checkpoints -> "
                                   "fine-tuning -> evaluation -> registry (with audit events) -> bento of VOICE's "
                                   "champion (or latest version), or of VOICE@VERSION.")
    p.add_argument("voice", metavar="VOICE[@VERSION]", help="e.g. alice or alice@3")
    p.add_argument("--version", type=int, metavar="N", help="the version (same as VOICE@N)")
    p.add_argument("--verify", action="store_true",
                   help="check that nothing changed since registration: the lineage document's digest, every lineage "
                        "tag, the bundle tags and the champion alias against the audit log; exit 2 naming what "
                        "changed")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    _common(p)
    p.set_defaults(func=_cmd_lineage)

    p = sub.add_parser("package", help="bundle a registered voice version for serving, or build the champion's bento",
                       description="With --version: bundle VOICE version N (its fine-tuned files, reference clip "
                                   "and voice.yaml) into --out and the BentoML model store as narrator-VOICE:vN, "
                                   "speak package.sample_text with it, watermarked with the version's payload, and "
                                   "tag the registered version with the store tag. Without --version: build the "
                                   "service bento (bentofile.yaml) with VOICE's champion bundle, tagged "
                                   "narrator:VOICE-vN.")
    p.add_argument("voice", metavar="VOICE", help="voice name, e.g. alice")
    p.add_argument("--version", type=int, metavar="N", help="registered version number to bundle (omit: build the "
                                                            "champion's bento)")
    p.add_argument("--features", metavar="DIR", help="the --out folder of `narrator features` (with --version)")
    p.add_argument("--sovits", metavar="PTH", help="the version's SoVITS file (with --version)")
    p.add_argument("--gpt", metavar="CKPT", help="the version's GPT file (with --version)")
    p.add_argument("--out", metavar="DIR", help="output folder (bundle/, package.json) (with --version)")
    _common(p)
    p.set_defaults(func=_cmd_package)

    p = sub.add_parser("pipeline", help="compile, run or schedule a Kubeflow pipeline (onboard, batch, retrain, "
                                        "narrate)",
                       description="The Kubeflow Pipelines (kfp v2) DAGs of pipelines/: onboard (one narrator), "
                                   "batch (many), retrain (new recordings -> challenger). Run here with kfp's local "
                                   "runner (--local) or on a cluster (--host URL).")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("compile", help="write the pipeline YAML", description="Compile a pipeline to YAML.")
    a.add_argument("name", choices=["onboard", "batch", "retrain", "narrate"])
    a.add_argument("--out", metavar="FILE", help="YAML to write (default: NAME.yaml)")
    _common(a)
    a.set_defaults(func=_cmd_pipeline_compile)
    for action, text in (("run", "run once, here (--local) or on a cluster (--host URL)"),
                         ("schedule", "create a recurring run on a cluster (pipeline.retrain_cron)")):
        a = actions.add_parser(action, help=text, description=text[0].upper() + text[1:] + ".")
        a.add_argument("name", choices=["onboard", "batch", "retrain", "narrate"])
        if action == "run":
            where = a.add_mutually_exclusive_group(required=True)
            where.add_argument("--local", action="store_true", help="run on this machine with kfp's local runner")
            where.add_argument("--host", metavar="URL", help="Kubeflow Pipelines API URL")
        else:
            a.add_argument("--host", metavar="URL", help="Kubeflow Pipelines API URL (default: pipeline.kfp_host)")
            a.add_argument("--cron", metavar="EXPR", help="six-field cron (default: pipeline.retrain_cron)")
        a.add_argument("--namespace", metavar="NS", help="cluster runs: Kubernetes namespace (Kubeflow profile) "
                                                         "(default: $KF_PIPELINES_NAMESPACE, else pipeline.namespace)")
        a.add_argument("--token", metavar="TOKEN", help="cluster runs: bearer token of the Kubeflow Pipelines API "
                                                        "(default: $KF_PIPELINES_TOKEN, else the service-account "
                                                        "token file $KF_PIPELINES_SA_TOKEN_PATH when there is one)")
        a.add_argument("--source", metavar="DIR|S3", help="the narrator's recordings (onboard, retrain)")
        a.add_argument("--voice", metavar="NAME", help="voice name (onboard, retrain)")
        a.add_argument("--narrators", metavar="JSON", help="batch: a JSON file listing {source, voice} objects")
        a.add_argument("--manuscript", metavar="FILE|S3", help="narrate: the book (.txt, .md, .epub, .docx)")
        if action == "run":
            _verbose(a)
        _common(a)
        a.set_defaults(func=_cmd_pipeline_run if action == "run" else _cmd_pipeline_schedule)

    p = sub.add_parser("onboard", help="one command: recordings in, a registered, packaged voice out (runs locally)",
                       description="Run the onboarding pipeline on this machine (kfp local runner, MLflow on "
                                   "sqlite, local files): validate, prepare, features, fine-tune SoVITS and GPT, "
                                   "evaluate, check the watermark, register and package. A failed step stops the "
                                   "run with its error; running the same command again resumes after the last "
                                   "finished step. Needs the watermark key ($NARRATOR_WATERMARK_KEY[_FILE]).")
    p.add_argument("source", metavar="SOURCE", help="folder or s3://bucket/prefix with the narrator's recordings")
    p.add_argument("--voice", required=True, metavar="NAME", help="voice name, e.g. alice")
    _verbose(p)
    _common(p)
    p.set_defaults(func=_cmd_onboard)

    p = sub.add_parser("narrate", help="narrate a manuscript (.txt, .md, .epub, .docx) into a publishable audiobook",
                       description="Narrate a manuscript with a registered voice: one MP3 (192 kbps CBR, 44.1 kHz, "
                                   "ACX loudness, room tone), WAV master and WebVTT captions per chapter, book.m4b "
                                   "with chapter marks, narration.json and report.html in --out. Every sentence "
                                   "passes the quality guard (loops, duration per phone, ASR when "
                                   "narrate.guard_limits.asr_model_dir is set) or is spoken again with the next "
                                   "seed (narrate.max_attempts); sentences that still fail are listed. Every chapter "
                                   "carries the voice's watermark (needs $NARRATOR_WATERMARK_KEY[_FILE]) and gets an "
                                   "audit record. Re-running the same command after a kill redoes no finished "
                                   "sentence and gives byte-identical chapters. Exit 2: the manuscript, the voice or "
                                   "--out was refused.")
    p.add_argument("manuscript", metavar="MANUSCRIPT", help="the book: .txt (one chapter), .md (headings start "
                                                            "chapters), .epub or .docx")
    p.add_argument("--voice", required=True, metavar="VOICE[@VERSION]",
                   help="registered voice, e.g. alice (its champion) or alice@3")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (resumable: re-run with the same one)")
    _common(p)
    p.set_defaults(func=_cmd_narrate)

    p = sub.add_parser("serve", help="run the speech service (BentoML): many voices, streaming, API keys, audit",
                       description="Serve the champion voices of the registry over HTTP (serving/service.py): "
                                   "POST /v1/speech, /v1/speech/stream, GET /v1/voices, POST /v1/watermark/detect, "
                                   "/healthz, /readyz, /metrics and the web console at /. Needs the watermark key "
                                   "($NARRATOR_WATERMARK_KEY[_FILE]) and API keys (`narrator keys create`).")
    p.add_argument("--port", type=int, metavar="N", help="port (default: serving.port)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only; "
                                                       "0.0.0.0 for every interface, e.g. in a container)")
    p.add_argument("--bento", metavar="TAG", help="serve a built bento (e.g. narrator:alice-v3) instead of the code")
    _common(p)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("keys", help="create, list or revoke the service's API keys",
                       description="API keys are stored hashed in serving.keys_file (or the Redis of "
                                   "serving.state_url) with their tenant and voices.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("create", help="create a key (printed once)", description="Create an API key.")
    a.add_argument("--tenant", required=True, help="the tenant the key belongs to")
    a.add_argument("--voices", default="", help="comma-separated registered voices of the tenant it may use, or '*' "
                                                "for all the tenant's (checked against the registry)")
    a.add_argument("--scopes", default="", help="comma-separated extra rights: metrics (read /metrics when "
                                                "serving.metrics_key_required)")
    a.add_argument("--label", default="", help="a note shown by `keys list`")
    _common(a)
    a.set_defaults(func=_cmd_keys_create)
    a = actions.add_parser("list", help="list keys (ids, tenants, voices; never the secrets)",
                           description="List the API keys.")
    _common(a)
    a.set_defaults(func=_cmd_keys_list)
    a = actions.add_parser("revoke", help="revoke a key by id", description="Revoke an API key.")
    a.add_argument("key_id", metavar="ID")
    _common(a)
    a.set_defaults(func=_cmd_keys_revoke)

    p = sub.add_parser("audit", help="check an audit log's chain (the service's or the registry's)",
                       description="Audit logs are JSON lines (a file, or rows of a PostgreSQL table) chained by "
                                   "HMAC-SHA256 with the audit key ($NARRATOR_AUDIT_KEY or audit_key_file), or by "
                                   "plain sha256 when written without a key (not tamper-proof).")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("verify", help="exit 0 when intact, 2 naming the first edited, inserted or deleted "
                                          "record or a cut-off end",
                           description="Verify an audit log's chain (default: serving.audit_log) with the audit key "
                                       "(--key-file, else $NARRATOR_AUDIT_KEY, else the log's audit_key_file "
                                       "setting). Says how many records are sealed with the key and how many are "
                                       "unkeyed.")
    a.add_argument("file", nargs="?", metavar="FILE|URL",
                   help="the log: a file or a postgresql://USER@HOST/DB?table=NAME URL (default: serving.audit_log)")
    a.add_argument("--key-file", metavar="FILE", help="file holding the audit key (default: $NARRATOR_AUDIT_KEY, "
                                                     "else the audit_key_file setting of the log's section)")
    a.add_argument("--require-key", action="store_true",
                   help="exit 2 unless every record is sealed with the key (refuses unkeyed and unchecked records)")
    _common(a)
    a.set_defaults(func=_cmd_audit_verify)

    p = sub.add_parser("demo", help="onboard a generated demo narrator end to end and speak a watermarked sample",
                       description="What `make demo` runs: generate a demo narrator (espeak-ng speech, "
                                   "transcripts, consent record) and small random base models (no official "
                                   "weights are downloaded), then `narrator onboard` it with demo settings (few "
                                   "epochs, a demo watermark key, the registry and model store under --out) and "
                                   "print the packaged voice, its lineage and its watermarked sample.")
    p.add_argument("--out", default="demo", metavar="DIR", help="output folder (default: demo)")
    _verbose(p)
    _common(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("config", help="print the resolved configuration (or every default)",
                       description="Print the configuration as the steps see it, after params.yaml and --set.")
    p.add_argument("--defaults", action="store_true", help="print the built-in defaults of every key")
    _common(p)
    p.set_defaults(func=_cmd_config)
    return parser


def _version() -> str:
    from narrator import __version__

    return __version__


def _load(args):
    from narrator.config import load_params, parse_set_option

    return load_params(args.params, parse_set_option(args.set))


@contextmanager
def _on_local_disk(args: argparse.Namespace, folders: tuple[str, ...] = (), files: tuple[str, ...] = (),
                   out: str | None = None, out_file: str | None = None, passthrough: tuple[str, ...] = (),
                   params: Params | None = None, upload: bool = True) -> Iterator[argparse.Namespace]:
    """The arguments with every s3:// location replaced by a local path, so the steps only see local paths.

    `folders` and `files` name the input arguments (mirrored from S3 into the cache, or fetched), `out` the output
    folder (staged in the cache, resumed from and uploaded back on exit, also on failure) and `out_file` a single
    output file (uploaded on success). `passthrough` names inputs the step reads from S3 itself (only checked not
    to overlap the output). Local paths are left exactly as given; `params` are loaded only when a URI needs them.
    `upload=False` stages the output without uploading it (ranks other than 0 of a distributed run).
    """
    from narrator import storage

    local = argparse.Namespace(**vars(args))
    names = (*folders, *files, *passthrough, *(n for n in (out, out_file) if n))
    for name in names:
        storage.check_location(getattr(args, name))
    remote = [name for name in names if storage.is_s3(getattr(args, name))]
    if not remote:
        yield local
        return
    cfg = (params or _load(args)).storage
    for name in (out, out_file):
        if name:
            storage.ensure_apart(getattr(args, name), [getattr(args, n) for n in (*folders, *files, *passthrough)])
    for name in folders:
        if name in remote:
            setattr(local, name, str(storage.local_dir(getattr(args, name), cfg)))
    for name in files:
        if name in remote:
            setattr(local, name, str(storage.fetch(getattr(args, name), cfg, key=name)))
    with ExitStack() as stack:
        if out in remote:
            setattr(local, out, str(stack.enter_context(storage.output_dir(getattr(args, out), cfg, upload=upload))))
        if out_file in remote:
            setattr(local, out_file, str(stack.enter_context(storage.output_file(getattr(args, out_file), cfg))))
        yield local


def _is_rank_zero() -> bool:
    """False in the processes of a torchrun launch other than rank 0 (they write no files)."""
    return os.environ.get("RANK", "0") == "0"


def _as_named(path, local_root: str, named_root: str) -> str:
    """A path the step returned, inside its local output `local_root`, as the user named the output (an s3:// URI
    when `named_root` is one); local paths are shown as the step returned them."""
    from narrator.storage import is_s3

    if not is_s3(named_root):
        return str(path)
    rel = Path(path).resolve().relative_to(Path(local_root).resolve()).as_posix()
    return named_root if rel == "." else f"{named_root.rstrip('/')}/{rel}"


def _shown(location: str, name: str) -> str:
    """Where a file of an output folder is, as the user named the folder (a local path or an s3:// prefix)."""
    from narrator.storage import is_s3

    return f"{location.rstrip('/')}/{name}" if is_s3(location) else str(Path(location) / name)


def _cmd_validate(args) -> int:
    from components.validate import validate

    params = _load(args)
    with _on_local_disk(args, out="out", passthrough=("source",), params=params) as local:
        report = validate(args.source, local.out, params)
    t = report.totals
    print(f"{report.verdict.upper()}: {t['accepted']} accepted, {t['warning']} warnings, {t['rejected']} rejected; "
          f"{t['accepted_speech_s']:.1f} s of accepted speech (need {t['required_speech_s']:g} s)")
    for message in report.messages:
        print(f"  - {message}", file=sys.stderr)
    print(f"report: {_shown(args.out, 'report.html')}")
    return 0 if report.accepted else 2


def _cmd_prepare(args) -> int:
    from components.prepare import prepare

    params = _load(args)
    with _on_local_disk(args, folders=("validated",), out="out", params=params) as local:
        report = prepare(local.validated, local.out, params)
    print(f"prepared {len(report.segments)} segments, {report.total_duration_s:.1f} s; "
          f"{len(report.rejected)} clips rejected -> {_shown(args.out, 'prepared.list')}")
    return 0


def _cmd_features(args) -> int:
    from components.features import extract_features

    params = _load(args)
    with _on_local_disk(args, folders=("prepared",), out="out", params=params) as local:
        manifest = extract_features(local.prepared, local.out, params)
    print(f"features for {len(manifest.entries)} segments ({manifest.sovits_version}) -> "
          f"{_shown(args.out, 'manifest.json')}")
    return 0


def _cmd_finetune_gpt(args) -> int:
    from components.finetune_gpt import finetune_gpt

    params = _load(args)
    with _on_local_disk(args, folders=("features",), out="out", params=params, upload=_is_rank_zero()) as local:
        summary = finetune_gpt(local.features, local.out, params)
    if not summary.exported:  # ranks other than 0 under torchrun
        return 0
    print(f"GPT fine-tuned: {summary.steps} steps in {summary.seconds:.0f} s -> "
          f"{_as_named(summary.checkpoint, local.out, args.out)} (sha256 {summary.sha256[:12]})")
    return 0


def _cmd_finetune_sovits(args) -> int:
    from components.finetune_sovits import finetune_sovits

    params = _load(args)
    with _on_local_disk(args, folders=("features",), out="out", params=params, upload=_is_rank_zero()) as local:
        summary = finetune_sovits(local.features, local.out, params)
    if summary.exported:  # rank 0 (the only process when not under torchrun)
        print(f"SoVITS fine-tuned: {summary.steps} steps in {summary.seconds:.0f} s -> "
              f"{_as_named(summary.checkpoint, local.out, args.out)} (sha256 {summary.sha256[:12]})")
    return 0


def _cmd_evaluate(args) -> int:
    from components.evaluate import evaluate

    params = _load(args)
    with _on_local_disk(args, folders=("features",), files=("sovits", "gpt"), out="out", params=params) as local:
        report = evaluate(local.features, local.sovits, local.gpt, local.out, params, lexicon_file=args.lexicon)
    shown = ", ".join(f"{k} {v:.3g}" for k, v in report.metrics.items() if v is not None)
    print(f"{'PASSED' if report.verdict['passed'] else 'FAILED'}: {shown}")
    for line in report.verdict["reasons"] + report.warnings:
        print(f"  - {line}", file=sys.stderr)
    print(f"report: {_shown(args.out, 'report.html')}")
    return 0 if report.verdict["passed"] else 2


def _cmd_watermark_embed(args) -> int:
    from components.watermark import embed_file
    from models.watermark import load_key
    from narrator.registry import RegistryError, format_payload, payload_for

    if args.voice:

        voice, _, version = args.voice.partition("@")
        if not version.isdigit():
            raise RegistryError(f"--voice {args.voice!r}: give VOICE@VERSION with a version number, e.g. alice@3")
        args.payload = format_payload(payload_for(voice, int(version), _load(args)))

    with _on_local_disk(args, files=("input",), out_file="output") as local:
        out = embed_file(local.input, local.output, args.payload, load_key())
    shown = _as_named(out, local.output, args.output)
    print(f"watermarked {args.input} with payload {args.payload.lower()} -> {shown}")
    return 0


def _cmd_watermark_detect(args) -> int:
    import json

    from components.watermark import detect_file
    from models.watermark import load_key

    with _on_local_disk(args, files=("input",)) as local:
        result = detect_file(local.input, load_key())
    if args.lookup and result["payload"]:
        from narrator.registry import lookup_payload

        found = lookup_payload(int(result["payload"], 16), _load(args))
        result.update(voice=found[0] if found else None, version=found[1] if found else None)
    print(json.dumps(result))
    return 0


def _cmd_register(args) -> int:
    from components.register import RegistryError, register
    from components.watermark import WatermarkCheck

    extra_tags = {}
    for item in args.tag:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RegistryError(f"--tag {item!r}: expected KEY=VALUE, e.g. --tag source_fingerprint=abc123")
        extra_tags[key.strip()] = value
    registration = register(args.voice, validated_dir=args.validated, prepared_dir=args.prepared,
                            features_dir=args.features, sovits_dir=args.sovits, gpt_dir=args.gpt,
                            evaluation_dir=args.evaluation, watermark=WatermarkCheck.read(args.watermark),
                            params=_load(args), extra_tags=extra_tags, lexicon_file=args.lexicon)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(registration.to_json(), encoding="utf-8")
    if not registration.new_version:  # the JSON on stdout stays machine-readable; the notice goes to stderr
        print(f"nothing new registered: {registration.model_name} version {registration.version} already holds these "
              f"fine-tuned files (same sha256), dataset, consent and evaluation "
              f"[{', '.join(registration.aliases) or 'no aliases'}]", file=sys.stderr)
    print(registration.to_json())
    return 0


def _cmd_lexicon_check(args) -> int:
    from cli.lexicon import check

    return check(args.manuscript, args.voice, args.lexicon, args.language, args.json, _load(args))


def _cmd_lexicon_validate(args) -> int:
    from cli.lexicon import validate

    return validate(args.file)


def _cmd_approve(args) -> int:
    from components.register import approve

    registration = approve(args.voice, args.version, args.by, _load(args))
    print(f"{registration.model_name} version {registration.version}: {registration.reason}; aliases "
          f"{', '.join(registration.aliases)}")
    return 0


def _cmd_lineage(args) -> int:
    from components.register import RegistryError, lineage, verify_lineage

    voice, _, version = args.voice.partition("@")
    if version and not version.isdigit():
        raise RegistryError(f"{args.voice!r}: expected VOICE or VOICE@VERSION with a version number, e.g. alice@3")
    if version and args.version is not None and int(version) != args.version:
        raise RegistryError(f"{args.voice!r} and --version {args.version} name different versions; give one")
    chosen = int(version) if version else args.version
    if args.verify:
        check = verify_lineage(voice, chosen, _load(args))
        print(check.to_json() if args.json else check.to_text(), end="\n" if args.json else "")
        return 0 if check.intact else 2
    found = lineage(voice, chosen, _load(args))
    print(found.to_json() if args.json else found.to_text(), end="\n" if args.json else "")
    return 0


def _cmd_watermark_check(args) -> int:
    from components.watermark import check_voice

    params = _load(args)
    with _on_local_disk(args, folders=("features",), files=("sovits", "gpt"), out="out", params=params) as local:
        result = check_voice(local.features, local.sovits, local.gpt, local.out, params, args.payload)
    print(f"watermark check passed: 3 s excerpt detected, payload {result.payload_read} read back from "
          f"{result.speech_s:.1f} s (score {result.score:.1f}) -> {_shown(args.out, 'sample.wav')}")
    return 0


def _cmd_package(args) -> int:
    from components.package import PackageError, build_bento, package

    params = _load(args)
    if args.version is None:

        built = build_bento(args.voice, params, params.serving.bentofile)
        print(f"built bento {built.tag} (voice {built.voice} v{built.version}, model {built.model}); run it with "
              f"`narrator serve --bento {built.tag}`")
        return 0
    missing = [f"--{name}" for name in ("features", "sovits", "gpt", "out") if not getattr(args, name)]
    if missing:
        raise PackageError(f"bundling version {args.version} needs {', '.join(missing)} (or omit --version to build "
                           "the champion's bento)")
    with _on_local_disk(args, folders=("features",), files=("sovits", "gpt"), out="out", params=params) as local:
        result = package(args.voice, args.version, local.features, local.sovits, local.gpt, local.out, params)
    mark = result.sample_watermark
    print(f"packaged {args.voice} version {args.version} as {result.store_tag} (payload {result.payload_hex}); "
          f"sample {_shown(args.out, 'voice/sample.wav')}: watermark detected {mark['detected']}, payload "
          f"{mark['payload']}")
    return 0


def _cmd_narrate(args) -> int:
    from components.narrate import narrate, parse_voice

    params = _load(args)
    voice, version = parse_voice(args.voice)
    result = narrate(args.manuscript, voice, version, args.out, params)
    for chapter in result.chapters:
        print(f"chapter {chapter.index} {chapter.title!r}: {chapter.audio} ({chapter.duration_s:.1f} s, RMS "
              f"{chapter.rms_db:.1f} dB, peak {chapter.peak_db:.1f} dBFS, {chapter.sentences} sentences, "
              f"{chapter.synthesized} spoken now, {chapter.regenerated} regenerated, {len(chapter.failed)} failing)")
    print(f"narrated {result.title!r} with {result.voice} v{result.version} in {result.seconds:.0f} s -> "
          f"{Path(args.out) / result.m4b}; report {Path(args.out) / result.report}")
    for failed in result.failed:
        print(f"needs a human: chapter {failed['chapter']} sentence {failed['index']} ({failed['attempts']} "
              f"attempts: {'; '.join(failed['reasons'])}): {failed['text']}", file=sys.stderr)
    return 0


def _cmd_serve(args) -> int:
    import tempfile

    import yaml

    params = _load(args)
    port = args.port or params.serving.port
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": os.environ.get("BENTOML_DO_NOT_TRACK", "true")}
    if params.package.bentoml_home:
        env["BENTOML_HOME"] = str(Path(params.package.bentoml_home).expanduser().resolve())
    with tempfile.TemporaryDirectory() as tmp:  # the service reads the resolved settings (--params and --set)
        resolved = Path(tmp) / "params.yaml"
        resolved.write_text(yaml.safe_dump(_absolute_paths(params.model_dump(by_alias=True, mode="json")),
                                           sort_keys=False))
        env["NARRATOR_PARAMS"] = str(resolved)
        target = args.bento or "serving.service:NarratorService"
        command = [sys.executable, "-m", "bentoml", "serve", target, "--port", str(port), "--host", args.host]
        if not args.bento:
            command += ["--working-dir", str(repo)]
        print(f"serving on http://{args.host}:{port} (console at /, API under /v1)", file=sys.stderr)
        return _run_forwarding_signals(command, env)


SERVE_STOP_TIMEOUT_S = 30.0  # after a stop signal, the service's processes get this long before SIGKILL


def _run_forwarding_signals(command: list[str], env: dict[str, str]) -> int:
    """Run `command` in its own process group and wait for it. SIGTERM, SIGINT and SIGHUP sent to this process (a
    supervisor stopping `narrator serve`, Ctrl-C) are passed to the whole group, so no worker is left running; a
    group still alive `SERVE_STOP_TIMEOUT_S` after the signal is killed. Returns the child's exit status."""
    import signal
    import subprocess
    import time

    child = subprocess.Popen(command, env=env, start_new_session=True)
    received: list[int] = []

    def forward(signum, _frame) -> None:
        received.append(signum)
        try:
            os.killpg(child.pid, signum)
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    stopping_since = None
    try:
        while True:
            try:
                code = child.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if received and stopping_since is None:
                    stopping_since = time.monotonic()
                if stopping_since is not None and time.monotonic() - stopping_since > SERVE_STOP_TIMEOUT_S:
                    os.killpg(child.pid, signal.SIGKILL)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        try:  # whatever of the group outlived its main process (workers) goes with it
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return 128 + received[0] if received and code < 0 else code


# settings naming files, resolved against the caller's folder before a process with another working folder reads them
_PATH_SETTINGS = (("serving", "keys_file"), ("serving", "audit_log"), ("registry", "audit_log"),
                  ("serving", "audit_key_file"), ("registry", "audit_key_file"),
                  ("package", "bentoml_home"), ("storage", "cache_dir"), ("training", "mlflow_tracking_uri"),
                  ("registry", "tracking_uri"), ("serving", "bundle_cache"))


def _absolute_paths(data: dict) -> dict:
    """`data` (params as a dict) with relative file settings and relative sqlite:/// URIs made absolute."""
    from narrator.tracking import SQLITE_PREFIX, sqlite_database

    for section, key in _PATH_SETTINGS:
        value = data.get(section, {}).get(key)
        if not value:
            continue
        db = sqlite_database(value)
        if db is not None:
            if not db.is_absolute():
                data[section][key] = SQLITE_PREFIX + str(db.resolve())
        elif "://" not in value:
            data[section][key] = str(Path(value).expanduser().resolve())
    return data


def _cmd_keys_create(args) -> int:
    from narrator.keys import ALL_VOICES, check_voices, open_key_store
    from narrator.registry import voice_tenants

    params = _load(args)
    voices = [v for v in (args.voices or "").split(",") if v.strip()]
    if any(v.strip() != ALL_VOICES for v in voices):  # named voices: registered, and the tenant's own
        check_voices(args.tenant, voices, voice_tenants(params))
    store = open_key_store(params.serving)
    secret, record = store.create(args.tenant, voices, args.label,
                                  [s for s in (args.scopes or "").split(",") if s.strip()])
    print(secret)
    scopes = f", scopes {','.join(record.scopes)}" if record.scopes else ""
    print(f"key {record.id} for tenant {record.tenant}, voices {','.join(record.voices) or 'none'}{scopes}: shown "
          f"once, stored hashed in {store.location}", file=sys.stderr)
    return 0


def _cmd_keys_list(args) -> int:
    from narrator.keys import open_key_store

    for key in open_key_store(_load(args).serving).keys():
        print(f"{key.id}  tenant {key.tenant}  voices {','.join(key.voices)}"
              f"{'  scopes ' + ','.join(key.scopes) if key.scopes else ''}  created {key.created_at}"
              f"{'  REVOKED' if key.revoked else ''}{'  ' + key.label if key.label else ''}")
    return 0


def _cmd_keys_revoke(args) -> int:
    from narrator.keys import open_key_store

    key = open_key_store(_load(args).serving).revoke(args.key_id)
    print(f"revoked key {key.id} (tenant {key.tenant})")
    return 0


def _cmd_audit_verify(args) -> int:
    from narrator.audit import AuditError, load_key, verify

    params = _load(args)
    location = args.file or params.serving.audit_log
    if args.key_file:  # named on the command line: it wins over $NARRATOR_AUDIT_KEY
        key = load_key(args.key_file, environ={})
    else:
        key = load_key(params.registry.audit_key_file if location == params.registry.audit_log
                       else params.serving.audit_key_file)
    found = verify(location, key)
    print(found.summary())
    if args.require_key and found.keyed < found.records:
        raise AuditError(f"{found.records - found.keyed} of {found.records} records are not sealed with the audit "
                         "key (--require-key); give the key the log was written with, or find who wrote them "
                         "without it")
    return 0


def _pipeline_arguments(args, params) -> dict:
    """The pipeline's arguments from the command line and the current params (each step's params slice)."""
    import json

    from pipelines.run import step_arguments

    arguments = step_arguments(args.name, params)
    if args.name == "batch":
        if not args.narrators:
            raise NarratorError("the batch pipeline needs --narrators FILE: a JSON list of {\"source\": ..., "
                                "\"voice\": ...} objects")
        arguments["narrators"] = json.loads(Path(args.narrators).read_text(encoding="utf-8"))
    elif args.name == "narrate":
        from components.narrate import parse_voice

        if not (getattr(args, "manuscript", None) and args.voice):
            raise NarratorError("the narrate pipeline needs --manuscript (a file every step can read, or s3://) and "
                                "--voice NAME[@VERSION]")
        voice, version = parse_voice(args.voice)
        manuscript = args.manuscript if args.manuscript.startswith("s3://") else str(Path(args.manuscript).resolve())
        arguments.update(manuscript=manuscript, voice=voice, version=version or 0)
    else:
        if not (args.source and args.voice):
            raise NarratorError(f"the {args.name} pipeline needs --source (recordings folder or s3:// prefix) and "
                                "--voice NAME")
        source = args.source if args.source.startswith("s3://") else str(Path(args.source).resolve())
        arguments.update(source=source, voice=args.voice)
    return arguments


def _cmd_pipeline_compile(args) -> int:
    from pipelines.run import compile_pipeline

    out = compile_pipeline(args.name, _load(args), args.out or f"{args.name}.yaml")
    print(f"compiled the {args.name} pipeline -> {out}")
    return 0


def _print_local_run(result) -> None:
    for row in result.summary or []:
        if row.get("verdict") in ("refused", "failed"):
            print(f"{row['voice']}: {row['verdict']}: {'; '.join(row.get('reasons', []))}", file=sys.stderr)
    for refusal in result.refusals if result.summary is None else []:
        print(f"{refusal['voice']}: refused: {'; '.join(refusal['reasons'])}", file=sys.stderr)
    for pkg in result.packages:
        mark = pkg["sample_watermark"]
        print(f"{pkg['voice']} version {pkg['version']}: packaged as {pkg['store_tag']}; sample {pkg['sample']} "
              f"(watermark detected: {mark['detected']}, payload {mark['payload']})")
    for failure in result.gate_failures:
        print(f"gates failed ({failure['evaluation']}): {'; '.join(failure['reasons'])}", file=sys.stderr)
    print(f"{result.pipeline} finished in {result.seconds:.0f} s; step outputs under {result.root}")


def _cmd_pipeline_run(args) -> int:
    from pipelines.run import run_local, submit

    params = _load(args)
    arguments = _pipeline_arguments(args, params)
    if args.local:
        result = run_local(args.name, params, arguments, verbose=args.verbose)
        _print_local_run(result)
        return 2 if (result.gate_failures or result.refusals) and not result.packages else 0
    run = submit(args.name, params, arguments, args.host, namespace=args.namespace, token=args.token)
    print(f"submitted the {args.name} pipeline: run {run}")
    return 0


def _cmd_pipeline_schedule(args) -> int:
    from pipelines.run import schedule

    params = _load(args)
    job = schedule(args.name, params, _pipeline_arguments(args, params), args.host, args.cron,
                   namespace=args.namespace, token=args.token)
    print(f"scheduled the {args.name} pipeline ({args.cron or params.pipeline.retrain_cron}): recurring run {job}")
    return 0


def _onboard(source: str, voice: str, params, verbose: bool = False):
    """Run the onboarding pipeline locally and print its outcome; the LocalRun."""
    from pipelines.run import run_local, step_arguments

    source = source if source.startswith("s3://") else str(Path(source).resolve())
    result = run_local("onboard", params, {"source": source, "voice": voice, **step_arguments("onboard", params)},
                       verbose=verbose)
    _print_local_run(result)
    return result


def _cmd_onboard(args) -> int:
    result = _onboard(args.source, args.voice, _load(args), verbose=args.verbose)
    return 0 if result.packages else 2


def _cmd_demo(args) -> int:
    import yaml

    from cli.demo import build_demo_bases, build_demo_narrator, demo_key, demo_overrides
    from components.register import lineage, verify_lineage
    from narrator.config import load_params

    params = _load(args)
    out = Path(args.out).resolve()
    source = out / "narrator"
    if not (source / "consent.yaml").exists():
        print(f"generating demo narrator '{params.demo.speaker}' with espeak-ng in {source} ...")
        build_demo_narrator(source, params.demo)
    print(f"writing small random base models (official formats) in {out / 'base'} ...")
    overrides = demo_overrides(build_demo_bases(out / "base"), out)
    (out / "params.yaml").write_text(yaml.safe_dump(overrides, sort_keys=False), encoding="utf-8")
    demo_params = load_params(args.params, {**overrides, **_set_overrides(args)})
    if not (os.environ.get("NARRATOR_WATERMARK_KEY") or os.environ.get("NARRATOR_WATERMARK_KEY_FILE")):
        os.environ["NARRATOR_WATERMARK_KEY_FILE"] = str(demo_key(out))
        print(f"watermark key: a demo key in {os.environ['NARRATOR_WATERMARK_KEY_FILE']} (production keys come "
              "from $NARRATOR_WATERMARK_KEY or a mounted secret file)")
    voice = "demo"
    result = _onboard(str(source), voice, demo_params, verbose=args.verbose)
    if not result.packages:
        return 2
    import shutil

    packaged = result.packages[-1]
    sample = Path(shutil.copy2(packaged["sample"], out / "sample.wav"))
    print()
    print(lineage(voice, packaged["version"], demo_params).to_text(), end="")
    print(verify_lineage(voice, packaged["version"], demo_params).to_text(), end="")
    reports = sorted(Path(demo_params.pipeline.pipeline_root).rglob("validated/report.html"),
                     key=lambda p: p.stat().st_mtime)
    print(f"\nvalidation report: {reports[-1]}" if reports else "")
    print(f"the demo voice speaks (watermarked, payload {packaged['payload_hex']}): {sample}")
    print(f"check it: NARRATOR_WATERMARK_KEY_FILE={os.environ.get('NARRATOR_WATERMARK_KEY_FILE', '...')} "
          f"narrator watermark detect {sample} --lookup --params {out / 'params.yaml'}")
    return 0


def _set_overrides(args) -> dict:
    from narrator.config import parse_set_option

    return parse_set_option(args.set)


def _cmd_config(args) -> int:
    import yaml

    from narrator.config import defaults_yaml

    if args.defaults:
        print(defaults_yaml(), end="")
    else:
        print(yaml.safe_dump(_load(args).model_dump(by_alias=True, mode="json"), sort_keys=False), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    from narrator.log import setup_logging

    setup_logging(args.log_level, args.log_format)
    try:
        return args.func(args)
    except NarratorError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug: say so, keep the traceback for --log-level debug
        import logging

        from narrator.storage import explain_os_error, is_user_os_error

        if is_user_os_error(error):  # a full disk, a read-only folder, no permission: the user's to fix
            logging.getLogger("narrator").debug("disk or permission error", exc_info=True)
            print(f"error: {explain_os_error(error)}", file=sys.stderr)
            return 2
        logging.getLogger("narrator").debug("internal error", exc_info=True)
        print(f"internal error: {type(error).__name__}: {error}\n"
              "This is a bug in narrator. Re-run with --log-level debug for the traceback and report it.",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
