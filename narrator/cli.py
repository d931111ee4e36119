"""The `narrator` command line: one thin front over the pipeline steps in `components/`.

Exit status: 0 success, 2 the input was refused (the message says why and what to do), 1 any other error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from narrator.errors import NarratorError

EPILOG = """\
examples:
  narrator validate recordings/alice --out runs/alice/validated
  narrator validate s3://voices/alice --out runs/alice/validated
  narrator prepare runs/alice/validated --out runs/alice/prepared
  narrator features runs/alice/prepared --out runs/alice/features
  narrator finetune-gpt runs/alice/features --out runs/alice/gpt
  narrator finetune-sovits runs/alice/features --out runs/alice/sovits
  narrator evaluate runs/alice/features --sovits runs/alice/sovits/sovits.pth --gpt runs/alice/gpt/gpt.ckpt \
      --out runs/alice/evaluation
  narrator watermark embed speech.wav marked.wav --payload 00c0ffee
  narrator watermark detect marked.wav
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
                                   "modified. Exit 0: accepted; 2: dataset refused; 1: internal error.")
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
                                   "`torchrun --nproc_per_node N -m narrator.cli finetune-sovits ...`.")
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
    a.add_argument("--payload", required=True, metavar="HEX", help="32-bit payload as 8 hex digits, e.g. 00c0ffee")
    _common(a)
    a.set_defaults(func=_cmd_watermark_embed)
    a = actions.add_parser("detect", help="look for the mark; print JSON {detected, payload, score}",
                           description="Look for the mark in IN and print {\"detected\", \"payload\", \"score\"} as "
                                       "JSON (payload: 8 hex digits, or null when it cannot be read; it needs about "
                                       "10 s of marked audio). Exit 0 whether or not a mark is found; 1 when the file "
                                       "cannot be read.")
    a.add_argument("input", metavar="IN", help="audio file (wav, flac, mp3, ogg, m4a)")
    _common(a)
    a.set_defaults(func=_cmd_watermark_detect)

    p = sub.add_parser("demo", help="generate a demo narrator with espeak-ng and run the pipeline on it",
                       description="Generate a demo narrator (espeak-ng speech, transcripts, consent record) and "
                                   "run validate and prepare on it. What `make demo` runs.")
    p.add_argument("--out", default="demo", metavar="DIR", help="output folder (default: demo)")
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


def _cmd_validate(args) -> int:
    from components.validate import validate

    report = validate(args.source, args.out, _load(args))
    out = Path(args.out)
    t = report.totals
    print(f"{report.verdict.upper()}: {t['accepted']} accepted, {t['warning']} warnings, {t['rejected']} rejected; "
          f"{t['accepted_speech_s']:.1f} s of accepted speech (need {t['required_speech_s']:g} s)")
    for message in report.messages:
        print(f"  - {message}", file=sys.stderr)
    print(f"report: {out / 'report.html'}")
    return 0 if report.accepted else 2


def _cmd_prepare(args) -> int:
    from components.prepare import prepare

    report = prepare(args.validated, args.out, _load(args))
    print(f"prepared {len(report.segments)} segments, {report.total_duration_s:.1f} s; "
          f"{len(report.rejected)} clips rejected -> {Path(args.out) / 'prepared.list'}")
    return 0


def _cmd_features(args) -> int:
    from components.features import extract_features

    manifest = extract_features(args.prepared, args.out, _load(args))
    print(f"features for {len(manifest.entries)} segments ({manifest.sovits_version}) -> "
          f"{Path(args.out) / 'manifest.json'}")
    return 0


def _cmd_finetune_gpt(args) -> int:
    from components.finetune_gpt import finetune_gpt

    summary = finetune_gpt(args.features, args.out, _load(args))
    if "checkpoint" not in summary:  # ranks other than 0 under torchrun
        return 0
    print(f"GPT fine-tuned: {summary['steps']} steps in {summary['seconds']:.0f} s -> {summary['checkpoint']} "
          f"(sha256 {summary['sha256'][:12]})")
    return 0


def _cmd_finetune_sovits(args) -> int:
    from components.finetune_sovits import finetune_sovits

    summary = finetune_sovits(args.features, args.out, _load(args))
    if "checkpoint" in summary:  # rank 0 (the only process when not under torchrun)
        print(f"SoVITS fine-tuned: {summary['steps']} steps in {summary['seconds']:.0f} s -> {summary['checkpoint']} "
              f"(sha256 {summary['sha256'][:12]})")
    return 0


def _cmd_evaluate(args) -> int:
    from components.evaluate import evaluate

    report = evaluate(args.features, args.sovits, args.gpt, args.out, _load(args))
    shown = ", ".join(f"{k} {v:.3g}" for k, v in report.metrics.items() if v is not None)
    print(f"{'PASSED' if report.verdict['passed'] else 'FAILED'}: {shown}")
    for line in report.verdict["reasons"] + report.warnings:
        print(f"  - {line}", file=sys.stderr)
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0 if report.verdict["passed"] else 2


def _cmd_watermark_embed(args) -> int:
    from components.watermark import embed_file
    from models.watermark import load_key

    out = embed_file(args.input, args.output, args.payload, load_key())
    print(f"watermarked {args.input} with payload {args.payload.lower()} -> {out}")
    return 0


def _cmd_watermark_detect(args) -> int:
    import json

    from components.watermark import detect_file
    from models.watermark import load_key

    print(json.dumps(detect_file(args.input, load_key())))
    return 0


def _cmd_demo(args) -> int:
    from components.prepare import prepare
    from components.validate import validate
    from narrator.demo import build_demo_narrator

    params = _load(args)
    out = Path(args.out)
    source = out / "narrator"
    if not (source / "consent.yaml").exists():
        print(f"generating demo narrator '{params.demo.speaker}' with espeak-ng in {source} ...")
        build_demo_narrator(source, params.demo)
    report = validate(str(source), out / "validated", params)
    t = report.totals
    print(f"validate: {report.verdict}; {t['accepted']} accepted, {t['rejected']} rejected, "
          f"{t['accepted_speech_s']:.1f} s of speech")
    if not report.accepted:
        for message in report.messages:
            print(f"  - {message}", file=sys.stderr)
        return 2
    prepared = prepare(out / "validated", out / "prepared", params)
    print(f"prepare: {len(prepared.segments)} segments, {prepared.total_duration_s:.1f} s -> "
          f"{out / 'prepared' / 'prepared.list'}")
    print(f"\nOpen the validation report: {(out / 'validated' / 'report.html').resolve()}")
    return 0


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

        logging.getLogger("narrator").debug("internal error", exc_info=True)
        print(f"internal error: {type(error).__name__}: {error}\n"
              "This is a bug in narrator. Re-run with --log-level debug for the traceback and report it.",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
