"""Narrator: one minute of a narrator's consented speech in, a watermarked production voice out.

This package is the ground floor, the library every other part builds on and which imports none of them:
typed configuration (`config`), errors (`errors`), structured logs (`log`), local and s3:// storage (`storage`),
audio files (`audiofile`), datasets (`dataset`), speech measurements (`speech`), metrics (`metrics`), HTML reports
(`report`), MLflow tracking (`tracking`), the voice registry (`registry`), hash-chained audit logs (`audit`) and
the voice bundle format (`bundle`).

Above it: the GPT-SoVITS models (`models/`), the pipeline steps (`components/`), and the fronts that call the
steps: the `narrator` command line (`cli/`), the Kubeflow pipelines (`pipelines/`), the DVC stages (`dvc.yaml`)
and the speech service (`serving/`).
"""

__version__ = "0.1.0"
