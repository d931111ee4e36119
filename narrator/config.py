"""Typed configuration: `params.yaml` is read once into these models, and every step takes its section.

Unknown keys and wrong types fail with a message that names the key (and the closest valid one), so a typo in
params.yaml never silently falls back to a default. Defaults here are the project's defaults; params.yaml at the
repository root repeats them so DVC can track each value.
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from narrator.errors import ConfigError

DEFAULT_PARAMS_FILE = "params.yaml"
POSTGRESQL_SCHEMES = ("postgresql://", "postgres://")  # what a PostgreSQL URL setting (registry.lock_url) starts with


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageConfig(_Section):
    """Where `s3://` URIs resolve. Credentials come from the usual AWS environment variables or profiles."""

    s3_endpoint_url: str | None = Field(None, description="e.g. http://127.0.0.1:9000 for MinIO; None for AWS")
    s3_region: str | None = None
    cache_dir: str = Field(".narrator-cache", description="where downloaded s3:// objects are kept")


class ValidateConfig(_Section):
    """Thresholds of `narrator validate` (components/validate.py). Each maps to one reason code."""

    audio_extensions: tuple[str, ...] = (".wav", ".flac", ".mp3", ".ogg", ".m4a")
    consent_file: str = "consent.yaml"
    min_clip_s: float = Field(1.0, gt=0, description="shorter clips: too_short")
    max_clip_s: float = Field(10.0, gt=0, description="longer clips: too_long (routed to slicing when possible)")
    max_source_s: float = Field(1800.0, gt=0, description="longer recordings are rejected (too_long) outright")
    min_sample_rate_hz: int = Field(16000, gt=0, description="lower rates: low_sample_rate")
    clip_level: float = Field(0.999, gt=0, le=1, description="|sample| at or above this counts as clipped")
    max_clipped_fraction: float = Field(0.001, ge=0, le=1, description="more clipped samples: clipped")
    silence_peak_dbfs: float = Field(-50.0, description="peak below this: silent")
    min_speech_ratio: float = Field(0.3, ge=0, le=1, description="less voice activity: low_speech_ratio")
    vad_threshold: float = Field(0.5, gt=0, lt=1, description="speech probability of the VAD model")
    min_snr_db: float = Field(15.0, description="lower estimated signal-to-noise ratio: low_snr")
    min_lufs: float = Field(-40.0, description="quieter integrated loudness: loudness_out_of_range")
    max_lufs: float = Field(-8.0, description="louder integrated loudness: loudness_out_of_range")
    languages: tuple[str, ...] = Field(("zh", "en"), description="languages the text front-end supports")
    duplicate_min_correlation: float = Field(
        0.995, gt=0, le=1, description="log-mel correlation above which two clips are the same audio: duplicate"
    )
    speaker_min_similarity: float = Field(
        0.8, ge=-1, le=1, description="cosine to the set's voice below this: speaker_outlier"
    )
    consent_min_similarity: float = Field(
        0.75, ge=-1, le=1, description="cosine of consent recording to the set's voice below this: refused"
    )
    min_total_speech_s: float = Field(60.0, ge=0, description="accepted speech below this: dataset refused")
    warn_reasons: tuple[str, ...] = Field(
        ("loudness_out_of_range",), description="reason codes that warn (prepare fixes them) instead of reject"
    )
    report_pictures: int = Field(24, ge=0, description="at most this many rejected clips get pictures in report.html")


class PrepareConfig(_Section):
    """Settings of `narrator prepare` (components/prepare.py)."""

    sample_rate_hz: int = Field(32000, description="SoVITS training audio")
    ssl_sample_rate_hz: int = Field(16000, description="HuBERT and speaker-model audio")
    min_segment_s: float = Field(2.0, gt=0)
    max_segment_s: float = Field(10.0, gt=0)
    max_whole_clip_s: float = Field(
        15.0, gt=0, description="without ASR, a long clip is kept whole up to this duration (it has one transcript)"
    )
    min_pause_s: float = Field(0.3, gt=0, description="a cut needs at least this much silence")
    silence_threshold_db: float = Field(-40.0, description="frames this far below the clip's peak are silence")
    keep_silence_s: float = Field(0.15, ge=0, description="silence kept at each edge after trimming")
    target_lufs: float = Field(-20.0, description="loudness every segment is normalised to")
    peak_limit_dbfs: float = Field(-1.0, le=0, description="peak ceiling after loudness normalisation")
    asr_model_dir: str | None = Field(None, description="local Whisper directory; transcribes cut segments")
    asr_language: str | None = Field(None, description="force the ASR language (zh/en); None = the clip's")
    holdout_share: float = Field(0.1, ge=0, lt=0.5, description="share of segments kept out of training for "
                                                                "`narrator evaluate` (at least one when > 0)")

    @model_validator(mode="after")
    def _segments_fit(self) -> PrepareConfig:
        if self.min_segment_s >= self.max_segment_s:
            raise ValueError("min_segment_s must be smaller than max_segment_s")
        return self


class PretrainedConfig(_Section):
    """Where the official base models live: local paths or s3:// URIs. Nothing is ever downloaded from a hub."""

    sovits: str | None = Field(None, description="SoVITS generator, e.g. gsv-v2final-pretrained/s2G2333k.pth")
    sovits_discriminator: str | None = Field(None, description="SoVITS discriminator, e.g. s2D2333k.pth")
    gpt: str | None = Field(None, description="GPT, e.g. s1bert25hz-5kh-longer-epoch=12-step=369668.ckpt")
    hubert_dir: str | None = Field(None, description="chinese-hubert-base directory (transformers layout)")
    bert_dir: str | None = Field(None, description="chinese-roberta-wwm-ext-large directory (transformers layout)")
    sv_checkpoint: str | None = Field(None, description="v2Pro speaker verification: pretrained_eres2netv2w24s4ep4.ckpt")


class FeaturesConfig(_Section):
    """Settings of `narrator features` (components/features.py)."""

    device: str = Field("auto", description="auto (cuda when available), cpu or cuda[:N]")
    bert_dtype: Literal["float32", "float16"] = Field("float16", description="storage type of BERT features")
    batch_size: int = Field(8, ge=1, description="segments per batch through BERT (and HuBERT, for equal lengths)")


class TrainingConfig(_Section):
    """The loop shared by the fine-tuning steps (components/training.py)."""

    seed: int = 1234
    device: str = Field("auto", description="auto (cuda when available), cpu or cuda[:N]")
    checkpoint_every_steps: int = Field(50, ge=1, description="a killed run resumes from the last of these")
    keep_checkpoints: int = Field(2, ge=1)
    log_every_steps: int = Field(10, ge=1)
    mlflow_tracking_uri: str | None = Field("sqlite:///mlflow.db", description="None disables MLflow logging")
    mlflow_experiment: str = "narrator"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on GPUs that have it, fp16 with loss scaling on older GPUs, fp32 on CPU")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward: less memory, ~30% slower")
    sample_every_steps: int = Field(200, ge=0, description="write (and log to MLflow) a sample wav every N steps; 0: never")


class FinetuneGPTConfig(_Section):
    """`narrator finetune-gpt` (components/finetune_gpt.py). Schedule shape of the official recipe; AdamW."""

    epochs: int = Field(15, ge=1, description="official WebUI default")
    batch_size: int | Literal["auto"] = Field(8, description="examples per batch; auto: one per 2 GB of GPU memory")
    accumulate_batches: int = Field(4, ge=1, description="optimizer step every N batches (official: 4)")
    lr: float = Field(2e-4, gt=0, description="peak learning rate (AdamW-sized; the official ScaledAdam uses 0.01)")
    lr_init: float = Field(1e-6, gt=0)
    lr_end: float = Field(1e-5, gt=0)
    warmup_steps: int = Field(20, ge=0, description="optimizer steps of linear warm-up")
    decay_steps: int = Field(400, ge=1, description="optimizer steps of cosine decay after warm-up")
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(2.0, gt=0, description="official: 2.0")
    random_init: dict[str, int] | None = Field(
        None, description="GPTConfig sizes for a model from scratch (tests, demo) instead of pretrained.gpt")


class FinetuneSoVITSConfig(_Section):
    """`narrator finetune-sovits` (components/finetune_sovits.py). The official stage-2 recipe (s2_train.py)."""

    epochs: int = Field(8, ge=1, description="official WebUI default")
    batch_size: int | Literal["auto"] = Field("auto", description="segments per batch; auto: one per 2 GB of GPU "
                                                                   "memory (the official rule), 4 on CPU")
    accumulate_batches: int = Field(1, ge=1, description="optimizer step every N batches")
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate of generator and discriminator")
    betas: tuple[float, float] = (0.8, 0.99)
    eps: float = Field(1e-9, gt=0)
    text_lr_weight: float = Field(0.4, gt=0, description="learning-rate factor of the text embedding, text encoder "
                                                         "and MRTE (official text_low_lr_rate)")
    lr_decay: float = Field(0.999875, gt=0, le=1, description="ExponentialLR gamma, applied per epoch")
    c_mel: float = Field(45.0, ge=0, description="weight of the L1 mel loss")
    c_kl: float = Field(1.0, ge=0, description="weight of the KL loss")
    grad_clip: float | None = Field(None, description="gradient-norm clip; None: no clipping (official)")
    random_init: dict[str, Any] | None = Field(
        None, description="SoVITSConfig sizes for a model from scratch (tests, demo) instead of pretrained.sovits")
    random_init_discriminator_divisor: int = Field(
        1, ge=1, description="with random_init: narrow the discriminator's layers by this power of two")


class GateConfig(_Section):
    """One quality gate of `evaluate.gates`: the threshold a metric must meet, and whether it must be measured.
    A bare number in params.yaml is the threshold of a required gate (`wer: 0.1` = `{threshold: 0.1}`)."""

    threshold: float = Field(description="speaker_similarity, f0_correlation and watermark_detected_share must be at "
                                         "least it, the others at most it")
    required: bool = Field(True, description="true: a voice whose metric could not be measured fails the gate "
                                             "(not_measured); false: the gate is skipped and reported as skipped")

    @model_validator(mode="before")
    @classmethod
    def _bare_threshold(cls, data: Any) -> Any:
        if isinstance(data, (int, float)) and not isinstance(data, bool):
            return {"threshold": data}
        if not isinstance(data, (dict, GateConfig)):
            raise ValueError("a gate is a threshold (e.g. 0.1) or {threshold: 0.1, required: false}")
        return data


class EvaluateConfig(_Section):
    """`narrator evaluate` (components/evaluate.py): held-out comparison, fixed sentences, quality gates."""

    device: str = Field("auto", description="auto (cuda when available), cpu or cuda[:N]")
    max_holdout_segments: int = Field(8, ge=0, description="held-out segments the voice re-speaks")
    sentences_per_language: int = Field(4, ge=0, le=6, description="fixed evaluation sentences spoken")
    asr_model_dir: str | None = Field(None, description="local Whisper directory for WER/CER (else "
                                                        "prepare.asr_model_dir; none: skipped with a warning)")
    speaker_model_dir: str | None = Field(None, description="WavLM-SV / ECAPA x-vector directory (transformers); "
                                                            "None: the intake GE2E model")
    duration_tolerance: float = Field(0.5, gt=0, description="an utterance whose duration over the one the "
                                                             "narrator's rate predicts is outside [1/(1+t), 1+t] "
                                                             "is an outlier (repeated or skipped words)")
    seed: int = 0
    gates: dict[str, GateConfig | None] = Field(
        {"speaker_similarity": GateConfig(threshold=0.75), "wer": GateConfig(threshold=0.10),
         "cer": GateConfig(threshold=0.10), "mcd_db": GateConfig(threshold=8.0, required=False),
         "f0_rmse_cents": GateConfig(threshold=300.0, required=False),
         "duration_outliers_share": GateConfig(threshold=0.1), "rtf": GateConfig(threshold=1.0),
         "watermark_detected_share": GateConfig(threshold=1.0)},
        description="metric: {threshold, required}; speaker_similarity, f0_correlation and watermark_detected_share "
                    "must be at least the threshold, the others at most it; null disables a gate. A required metric "
                    "that was not measured fails its gate (not_measured: e.g. WER/CER without an ASR model); a "
                    "metric the voice cannot have (CER of an English-only voice) and one not required are skipped. "
                    "MCD and F0 need held-out segments (prepare.holdout_share), so they are not required")


class RegistryConfig(_Section):
    """`narrator register` and `narrator approve` (components/register.py): MLflow model registry, promotion, audit."""

    tracking_uri: str = Field("sqlite:///mlflow.db", description="MLflow tracking and registry URI the voices are "
                                                                 "registered in (sqlite:///FILE, http://HOST:5000, ...)")
    model_prefix: str = Field("narrator-", description="registered model name = prefix + voice")
    deployment_policy: Literal["auto", "manual"] = Field(
        "auto", description="auto: a passing challenger that beats the champion is promoted at once; manual: it "
                            "waits for `narrator approve VOICE VERSION --by NAME`")
    promotion_metric: str = Field("speaker_similarity", description="evaluation metric a challenger must beat the "
                                                                    "champion on")
    promotion_higher_is_better: bool = Field(True, description="false for error-like metrics (wer, mcd_db, ...)")
    min_improvement: float = Field(0.0, ge=0, description="the challenger must be better by more than 0 and at "
                                                          "least this much (in the metric's units)")
    tenant: str | None = Field(None, description="tenant that owns the voices registered with these settings (the "
                                                 "registered model's `tenant` tag, which API keys are scoped by); "
                                                 "None: serving.default_tenant")
    audit_log: str = Field("registry-audit.jsonl", description="append-only JSON lines of every registration, "
                                                               "promotion and approval, each chained to the line "
                                                               "before by its mac; a file, or postgresql://USER@HOST"
                                                               "/DB?table=registry_audit (a table, created on first "
                                                               "use, that processes on several machines share)")
    lock_file: str | None = Field(None, description="file whose lock lets one registration or approval at a time "
                                                   "decide voice ids, versions and promotions (on one machine or a "
                                                   "shared filesystem); None: beside the sqlite database (a "
                                                   "registry server takes lock_url, or a postgresql:// audit_log's "
                                                   "database)")
    lock_url: str | None = Field(None, description="PostgreSQL database (postgresql://USER@HOST:PORT/DB) whose "
                                                  "advisory lock, keyed by tracking_uri, lets one registration or "
                                                  "approval at a time decide across machines; needed when "
                                                  "tracking_uri is a server (http/https) and audit_log is not "
                                                  "postgresql://; None: the file lock")
    audit_key_file: str | None = Field(None, description="file holding the secret that seals audit_log's records "
                                                        "(HMAC-SHA256; e.g. a mounted secret); $NARRATOR_AUDIT_KEY "
                                                        "wins; None and no variable: unkeyed sha256 chain, not "
                                                        "tamper-proof")
    lexicon: str | None = Field(None, description="the voice's pronunciation lexicon (lexicon.yaml, docs/lexicon.md; "
                                                 "local or s3://) registered with each new version, tagged "
                                                 "lexicon_sha256 and packaged in its bundle; None: none")
    tenant_lexicons: dict[str, str] = Field(default_factory=dict, description="tenant: lexicon.yaml merged under "
                                                                            "the voice's lexicon (the voice's "
                                                                            "entries win) when registering for "
                                                                            "that tenant (registry.tenant)")

    @model_validator(mode="after")
    def _lock_url_is_postgresql(self) -> RegistryConfig:
        if self.lock_url and not self.lock_url.startswith(POSTGRESQL_SCHEMES):
            raise ValueError(f"lock_url must be a postgresql:// URL, not {self.lock_url.split('://')[0]}://...")
        return self


class StreamingConfig(_Section):
    """Sub-sentence streaming (`models.tts.Synthesizer.stream` with `chunking`): the GPT hands its tokens out in
    chunks and SoVITS decodes each chunk with left context, holding the last tokens back and cross-fading into the
    next chunk (25 semantic tokens = 1 s of speech at 32 kHz)."""

    enabled: bool = Field(True, description="the service's streamed routes speak sub-sentence chunks (false: a "
                                            "chunk per sentence, with GPT decodes batched across requests)")
    first_chunk_tokens: int = Field(20, ge=1, description="tokens the GPT makes before the first chunk is decoded "
                                                          "(time to first audio)")
    chunk_tokens: int = Field(40, ge=1, description="tokens per later chunk")
    context_tokens: int = Field(24, ge=0, description="tokens before a chunk decoded with it (left context), "
                                                      "their audio not sent again")
    lookahead_tokens: int = Field(4, ge=1, description="a chunk's last tokens held back until the next chunk "
                                                       "gives them right context")
    crossfade_ms: float = Field(20.0, ge=0.0, description="each join cross-fades the held-back audio of the chunk "
                                                          "before into the new chunk's over this long")

    @model_validator(mode="after")
    def _fade_within_lookahead(self) -> "StreamingConfig":
        lookahead_ms = self.lookahead_tokens * 40.0  # 25 tokens per second
        if self.crossfade_ms > lookahead_ms:
            raise ValueError(f"crossfade_ms {self.crossfade_ms:g} is longer than the held-back audio "
                             f"(lookahead_tokens {self.lookahead_tokens} = {lookahead_ms:g} ms); shorten the "
                             "cross-fade or hold more tokens back")
        return self


class InferenceConfig(_Section):
    """How a voice speaks wherever it does: evaluation, the watermark check, the packaged sample and the service
    (`models.tts.Synthesizer.prepare`)."""

    mode: Literal["exact", "fast"] = Field(
        "exact", description="exact: float32, the official outputs up to float rounding; fast: on CPU a bfloat16 "
                             "SoVITS and int8 GPT decoding, on a GPU bfloat16 for both with CUDA-graph GPT decoding "
                             "steps (GPU figures: bash bench/gpu.sh; CPU: about 2.3x faster per "
                             "sentence on a 2-core CPU, see docs/benchmarks.md)")
    stream: StreamingConfig = StreamingConfig()


class PackageConfig(_Section):
    """`narrator package` (components/package.py): the voice bundle a server loads, kept in the BentoML model store."""

    bentoml_home: str | None = Field(None, description="BentoML store folder; None: $BENTOML_HOME, else ~/bentoml")
    sample_text: str = Field("Hello. This voice was made with the narrator's consent, and everything it says "
                             "carries an inaudible watermark.",
                             description="what the packaged voice speaks as its watermarked sample")
    sample_language: str = Field("en", description="language of sample_text (en or zh)")


class PipelineSecrets(_Section):
    """Kubernetes Secrets (in the runs' namespace) whose keys become environment variables of the steps that need
    them on a cluster, each step only the keys it reads (pipelines/cluster.py lists them); one Secret may hold them
    all (the default: narrator-secrets, the serving's too) or each its own. None: not injected (e.g. S3 access
    through the service account's IAM role). Local runs ignore them."""

    s3: str | None = Field("narrator-secrets", description="AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (optional "
                                                           "AWS_ENDPOINT_URL, AWS_DEFAULT_REGION): every step that "
                                                           "reads or writes s3:// or MLflow's artifacts")
    watermark: str | None = Field("narrator-secrets", description="NARRATOR_WATERMARK_KEY: the steps that speak or "
                                                                  "check marked audio")
    registry: str | None = Field("narrator-secrets", description="optional MLFLOW_TRACKING_USERNAME, "
                                                                 "MLFLOW_TRACKING_PASSWORD, MLFLOW_TRACKING_TOKEN, "
                                                                 "PGPASSWORD: the steps that talk to MLflow or take "
                                                                 "the registry lock")
    audit: str | None = Field("narrator-secrets", description="NARRATOR_AUDIT_KEY: the steps that append to the "
                                                              "audit log")


class PipelineConfig(_Section):
    """The Kubeflow pipelines (pipelines/): image, resources, caching, batch width, retraining schedule."""

    image: str = Field("narrator:latest", description="the project image (Dockerfile) every step runs in on Kubeflow; "
                                                      "a cluster pulls it, so compiling or submitting for one needs "
                                                      "a registry in it (REGISTRY/narrator:TAG, e.g. "
                                                      "ghcr.io/OWNER/narrator:1.0); local runs do not use it")
    pipeline_root: str = Field("runs/pipeline", description="local runs: where step outputs and the step cache live")
    kfp_host: str | None = Field(None, description="Kubeflow Pipelines API URL for --host runs (else give --host)")
    caching: bool = Field(True, description="reuse a finished step's outputs when its inputs and params are "
                                            "unchanged (a re-run resumes after the last finished step)")
    gpu_resource: str = Field("nvidia.com/gpu", description="accelerator resource name of the GPU nodes")
    training_gpus: int = Field(1, ge=0, description="GPUs per fine-tuning step; more than 1 runs the step as a "
                                                    "PyTorchJob (Kubeflow Training Operator) under torchrun")
    evaluate_gpus: int = Field(1, ge=0, description="GPUs of the evaluation and watermark-check steps")
    training_cpu: str = Field("8", description="CPU request of a fine-tuning step")
    training_memory: str = Field("32G", description="memory request of a fine-tuning step")
    step_cpu: str = Field("2", description="CPU request of the other steps")
    step_memory: str = Field("8G", description="memory request of the other steps")
    work_uri: str | None = Field(None, description="s3:// prefix where multi-GPU PyTorchJobs exchange features "
                                                   "and checkpoints with the pipeline (needed when training_gpus > 1)")
    namespace: str = Field("kubeflow", description="Kubernetes namespace (Kubeflow profile) runs are submitted to "
                                                   "and their PyTorchJobs run in; --namespace or "
                                                   "$KF_PIPELINES_NAMESPACE overrides it")
    batch_parallelism: int = Field(4, ge=1, description="narrators onboarded at once by pipelines/batch.py")
    retrain_cron: str = Field("0 0 3 * * 0", description="schedule of pipelines/retrain.py (KFP cron with seconds: "
                                                         "Sundays 03:00)")
    image_pull_secret: str | None = Field(None, description="Kubernetes Secret (docker-registry) the cluster pulls "
                                                           "a private pipeline.image with; None: a public image")
    service_account: str | None = Field("narrator-pipeline", description="Kubernetes service account of the runs' "
                                                                          "pods and the PyTorchJobs "
                                                                          "(deploy/kubeflow/rbac.yaml); None: the "
                                                                          "cluster's default")
    secrets: PipelineSecrets = Field(PipelineSecrets(), description="Kubernetes Secrets whose keys become the "
                                                                      "steps' environment on a cluster; None: not "
                                                                      "injected")
    retries: int = Field(3, ge=0, description="retries of a step that talks to the network (snapshot, validate, "
                                              "register, package, records, the PyTorchJob launcher) on a cluster")
    retry_backoff_s: int = Field(60, ge=0, description="wait before the first retry; doubles each retry")
    training_nodes: int = Field(1, ge=1, description="nodes of a multi-GPU fine-tuning PyTorchJob (1 Master + "
                                                     "N-1 Workers, each with training_gpus GPUs; torchrun "
                                                     "rendezvous over c10d)")


class ServingConfig(_Section):
    """The BentoML service (serving/): voices per process, limits, keys, audit log, batching, resources."""

    port: int = Field(3000, ge=1, le=65535, description="`narrator serve` listens here")
    gpus: int = Field(1, ge=0, description="GPUs the service requests (BentoML resources); 0 runs on CPU")
    workers: int = Field(1, ge=1, description="service processes (each holds its own voice cache)")
    traffic_timeout_s: int = Field(300, ge=1, description="longest a request may take before BentoML ends it")
    memory_budget_mb: float = Field(4096.0, gt=0, description="loaded voices' weights kept under this; least "
                                                              "recently used voices are evicted beyond it")
    max_voices: int = Field(8, ge=1, description="at most this many voices loaded per process")
    max_text_chars: int = Field(2000, ge=1, description="longer text is refused (413)")
    ssml_max_break_s: float = Field(10.0, ge=0, description="SSML: the longest <break time> (models/text/ssml.py)")
    ssml_break_strengths_s: dict[str, float] = Field(
        {"none": 0.0, "x-weak": 0.1, "weak": 0.25, "medium": 0.4, "strong": 0.7, "x-strong": 1.2},
        description="SSML: seconds of silence of each <break strength>")
    ssml_max_elements: int = Field(500, ge=1, description="SSML: elements a document may have")
    ssml_max_depth: int = Field(16, ge=1, description="SSML: how deep a document's elements may nest")
    max_upload_mb: float = Field(20.0, gt=0, description="larger watermark-detection uploads are refused (413)")
    rate_limit_per_minute: int = Field(60, ge=1, description="requests per API key per minute (token bucket; 429)")
    rate_limit_burst: int = Field(10, ge=1, description="requests a key may make at once before the rate applies")
    keys_file: str = Field("serving-keys.json", description="API keys: sha256 hashes with tenant and voice scopes "
                                                            "(`narrator keys create`)")
    audit_log: str = Field("serving-audit.jsonl", description="append-only, hash-chained log of every synthesis "
                                                              "(`narrator audit verify`); a file, or postgresql://"
                                                              "USER@HOST/DB?table=serving_audit (shared by service "
                                                              "replicas on several machines)")
    audit_key_file: str | None = Field(None, description="file holding the secret that seals audit_log's records "
                                                        "(HMAC-SHA256; e.g. a mounted secret); $NARRATOR_AUDIT_KEY "
                                                        "wins; None and no variable: unkeyed sha256 chain, not "
                                                        "tamper-proof")
    default_tenant: str = Field("default", description="tenant of a registered voice without a `tenant` tag")
    max_batch_size: int = Field(8, ge=1, description="GPT decodes of one voice batched together across requests")
    max_latency_ms: int = Field(10, ge=0, description="how long a decode waits for others to join its batch")
    sample_rates_hz: tuple[int, ...] = Field((16000, 22050, 24000, 32000, 44100, 48000),
                                             description="output sample rates a request may ask for")
    result_cache_items: int = Field(16, ge=0, description="seeded syntheses kept to re-encode in another format")
    bentofile: str = Field("bentofile.yaml", description="what `narrator package VOICE` builds the bento from")
    bundle_cache: str = Field("bundle-cache", description="where voice bundles fetched from the registry's artifact "
                                                         "store are kept (VOICE/vN/SHA256), checked by digest")
    cors_origins: tuple[str, ...] = Field((), description="web origins (https://app.example.com) whose pages may "
                                                          "call the API from a browser (CORS); none by default")
    metrics_key_required: bool = Field(False, description="/metrics answers only with an API key whose scopes "
                                                          "include `metrics` (`narrator keys create --scopes "
                                                          "metrics`); false: open, as Prometheus scrapes expect")
    preload_champions: bool = Field(True, description="load the champion voices (up to memory_budget_mb and "
                                                      "max_voices) before /readyz says ready, so the first request "
                                                      "costs what a warm one does")
    malloc_arena_max: int = Field(2, ge=0, description="glibc malloc arenas per worker (as MALLOC_ARENA_MAX), "
                                                       "which keeps a many-threaded worker's memory from fragmenting "
                                                       "upward under load; 0 leaves glibc's default (8 per core)")
    malloc_mmap_threshold_kb: int = Field(1024, ge=0, description="allocations from this size up (KB) are mapped on "
                                                                  "their own and returned to the system when freed "
                                                                  "(as MALLOC_MMAP_THRESHOLD_); 0 leaves glibc's "
                                                                  "rising threshold")
    state_url: str | None = Field(None, description="shared state of every worker and replica: redis://HOST:6379/0 "
                                                    "keeps API keys and rate-limit buckets in Redis (password from "
                                                    "$NARRATOR_STATE_PASSWORD); None: keys_file and a bucket file "
                                                    "beside it, shared by the workers of one machine")

    @model_validator(mode="after")
    def _state_url_is_redis(self) -> ServingConfig:
        if self.state_url is not None and not self.state_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"serving.state_url {self.state_url!r} is not a Redis URL: use redis://HOST:6379/0 "
                             "(rediss:// for TLS), or leave it unset for the local files")
        return self


class MasteringConfig(_Section):
    """Publishable chapter audio (narrator/mastering.py), held to the ACX (Audible) audio submission requirements."""

    sample_rate_hz: int = Field(44100, description="rate of every master, MP3 and M4B (ACX: 44.1 kHz)")
    mp3_bitrate_kbps: int = Field(192, ge=192, le=320, description="constant MP3 bitrate (ACX: 192 kbps CBR or more)")
    m4b_bitrate_kbps: int = Field(64, ge=32, le=320, description="AAC bitrate of the M4B book (mono speech)")
    head_room_tone_s: float = Field(0.75, description="room tone before the first word of a chapter")
    min_head_room_tone_s: float = Field(0.5, ge=0, description="ACX: at least 0.5 s of room tone at the head ...")
    max_head_room_tone_s: float = Field(1.0, gt=0, description="... and at most 1 s")
    tail_room_tone_s: float = Field(2.0, description="room tone after the last word of a chapter")
    min_tail_room_tone_s: float = Field(1.0, ge=0, description="ACX: at least 1 s of room tone at the tail ...")
    max_tail_room_tone_s: float = Field(5.0, gt=0, description="... and at most 5 s")
    target_rms_db: float = Field(-20.0, description="RMS of the whole chapter file, dBFS (20*log10 of the RMS)")
    min_rms_db: float = Field(-23.0, description="ACX: RMS at least -23 dB ...")
    max_rms_db: float = Field(-18.0, description="... and at most -18 dB")
    peak_ceiling_dbfs: float = Field(-3.5, lt=0, description="the limiter keeps every sample at or below this")
    max_peak_dbfs: float = Field(-3.0, lt=0, description="ACX: sample peaks at or below -3 dBFS (in the MP3 too)")
    max_noise_floor_db: float = Field(-60.0, description="ACX: noise floor (RMS of the quietest 0.5 s) at most -60 dB")
    noise_floor_window_s: float = Field(0.5, gt=0, description="window of the noise-floor measurement")
    room_tone_db: float = Field(-72.0, description="RMS of the room tone laid under the whole chapter: quiet, but "
                                                   "never digital silence (ACX rejects it)")
    room_tone_seed: int = Field(0, description="seed of the room tone noise (reruns are byte-identical)")
    room_tone_threshold_db: float = Field(-50.0, description="head and tail room tone are measured as the time the "
                                                             "level of 10 ms frames stays below this")
    highpass_hz: float = Field(60.0, gt=0, description="DC offset and rumble below this are removed")
    gate_below_speech_db: float = Field(40.0, gt=0, description="frames this far below the speech level (95th "
                                                                "percentile of frame levels) are expanded downwards")
    pause_above_noise_db: float = Field(6.0, ge=0, description="frames within this of the noise level (10th "
                                                               "percentile of frame levels) are pause frames ...")
    pause_min_below_speech_db: float = Field(10.0, gt=0, description="... when also this far below the speech "
                                                                     "level (so noisy audio keeps its words)")
    pause_min_s: float = Field(0.15, gt=0, description="a run of pause frames this long (between words and "
                                                       "sentences) is silenced down to the room tone")
    gate_ratio: float = Field(4.0, ge=1, description="downward expansion: each dB below the threshold becomes this "
                                                     "many dB")
    gate_smoothing_s: float = Field(0.05, gt=0, description="gate gain changes ramp over this long")
    limiter_window_s: float = Field(0.02, gt=0, description="the peak limiter's look-ahead and ramp time")
    rms_tolerance_db: float = Field(0.1, gt=0, description="normalise and limit again until the RMS is this close "
                                                           "to its target")
    max_passes: int = Field(8, ge=1, description="at most this many normalise-and-limit passes")

    @model_validator(mode="after")
    def _targets_inside_limits(self) -> MasteringConfig:
        for name, low, value, high in (
                ("head_room_tone_s", self.min_head_room_tone_s, self.head_room_tone_s, self.max_head_room_tone_s),
                ("tail_room_tone_s", self.min_tail_room_tone_s, self.tail_room_tone_s, self.max_tail_room_tone_s),
                ("target_rms_db", self.min_rms_db, self.target_rms_db, self.max_rms_db)):
            if not low <= value <= high:
                raise ValueError(f"{name} {value:g} lies outside its limits {low:g}..{high:g}: move it inside")
        if self.peak_ceiling_dbfs > self.max_peak_dbfs:
            raise ValueError(f"peak_ceiling_dbfs {self.peak_ceiling_dbfs:g} is above max_peak_dbfs "
                             f"{self.max_peak_dbfs:g}: set it lower (MP3 encoding raises peaks a little)")
        if self.room_tone_db >= self.max_noise_floor_db:
            raise ValueError(f"room_tone_db {self.room_tone_db:g} must lie below max_noise_floor_db "
                             f"{self.max_noise_floor_db:g}")
        return self


class DemoConfig(_Section):
    """The generated demo narrator of `make demo`."""

    voice: str = Field("en-us+m3", description="espeak-ng voice of the demo narrator")
    speaker: str = "Demo Narrator"
    organisation: str = "Narrator Demo Org"
    clips: int = Field(24, ge=1)
    speed_wpm: int = Field(150, ge=80, le=400)


class GuardConfig(_Section):
    """The quality guard on every narrated sentence (models/guard.py); the service's `quality: "checked"` too."""

    loop_ngram_tokens: int = Field(8, ge=2, description="semantic tokens per n-gram looked at for loops (25 per s)")
    loop_max_repeats: int = Field(3, ge=1, description="an n-gram occurring more often is a loop: regenerate")
    loop_max_run_tokens: int = Field(50, ge=2, description="one token repeated longer (2 s) is a stuck decoder")
    min_s_per_phone: float = Field(0.03, gt=0, description="faster speech suggests skipped words")
    max_s_per_phone: float = Field(0.3, gt=0, description="slower speech suggests repeated or babbled words")
    asr_model_dir: str | None = Field(None, description="local Whisper directory: also score each sentence's "
                                                        "WER/CER against its text (None: skipped)")
    max_error_rate: float = Field(0.3, ge=0, description="with asr_model_dir: a higher WER (en) / CER (zh) fails")


class NarrateConfig(_Section):
    """`narrator narrate` (components/narrate.py): a manuscript in, an audiobook out."""

    seed: int = Field(0, ge=0, description="sentence i of chapter c draws from sentence_seed(seed + attempt, "
                                           "c * 100000 + i): a re-run gives the same audio")
    language: str = Field("auto", description="en, zh or auto (per sentence)")
    max_attempts: int = Field(3, ge=1, description="a sentence failing the guard is spoken again with the next "
                                                   "seed up to this many times; the best attempt is kept")
    guard: bool = Field(True, description="check every sentence (guard_limits); false: one attempt each")
    guard_limits: GuardConfig = GuardConfig()
    parallel_chapters: int = Field(2, ge=1, description="chapters narrated at once (threads)")
    torch_threads: int = Field(0, ge=0, description="torch threads per chapter; 0: the CPU count over "
                                                    "parallel_chapters")
    sentence_pause_s: float = Field(0.45, ge=0, description="silence between sentences")
    paragraph_pause_s: float = Field(0.9, ge=0, description="silence after a paragraph's last sentence")
    max_sentence_chars: int = Field(200, ge=20, description="longer sentences are cut at commas, then spaces")


class Params(_Section):
    """The whole params.yaml."""

    storage: StorageConfig = StorageConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    prepare: PrepareConfig = PrepareConfig()
    pretrained: PretrainedConfig = PretrainedConfig()
    features: FeaturesConfig = FeaturesConfig()
    training: TrainingConfig = TrainingConfig()
    finetune_gpt: FinetuneGPTConfig = FinetuneGPTConfig()
    finetune_sovits: FinetuneSoVITSConfig = FinetuneSoVITSConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    inference: InferenceConfig = InferenceConfig()
    registry: RegistryConfig = RegistryConfig()
    package: PackageConfig = PackageConfig()
    pipeline: PipelineConfig = PipelineConfig()
    serving: ServingConfig = ServingConfig()
    mastering: MasteringConfig = MasteringConfig()
    demo: DemoConfig = DemoConfig()
    narrate: NarrateConfig = NarrateConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _entry_model(annotation: Any) -> type[BaseModel] | None:
    """The section type of a mapping of sections (`dict[str, GateConfig | None]`: GateConfig), else None."""
    if typing.get_origin(annotation) is not dict:
        return None
    entry = typing.get_args(annotation)[1]
    for kind in typing.get_args(entry) or (entry,):
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            return kind
    return None


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The valid keys of the section that `loc` (a pydantic error location) points into."""
    parts = list(loc[:-1])
    while parts:
        part = parts.pop(0)
        field = None
        for name, info in model.model_fields.items():
            if part in (name, info.alias):
                field = info
        entry = _entry_model(field.annotation) if field is not None else None
        if entry is not None and parts:  # a mapping of sections, e.g. evaluate.gates.wer: skip the key
            parts.pop(0)
            model = entry
            continue
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return [info.alias or name for name, info in model.model_fields.items()]


def _explain(error: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for item in error.errors():
        loc = tuple(item["loc"])
        key = ".".join(str(p) for p in loc)
        if item["type"] == "extra_forbidden":
            valid = _fields_at(Params, loc)
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(valid)})"
            lines.append(f"  unknown key '{key}'{hint}")
        else:
            lines.append(f"  '{key}': {item['msg']} (got {item.get('input')!r})")
    lines.append("Fix these keys in params.yaml; `narrator config --defaults` prints every key with its default.")
    return "\n".join(lines)


def parse_params(data: dict[str, Any] | None, source: str = "params") -> Params:
    """Validate a plain dict (as read from YAML) into Params, with readable errors."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(data).__name__}")
    try:
        return Params.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_explain(error, source)) from None


def load_params(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Params:
    """Read params.yaml once into typed config.

    `path` None means `./params.yaml` when it exists, else the built-in defaults. `overrides` is a nested dict
    merged over the file (used by tests and by `--set section.key=value`).
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is None and Path(DEFAULT_PARAMS_FILE).exists():
        path = DEFAULT_PARAMS_FILE
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"params file {path} does not exist; pass --params PATH or create it")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from None
        source = str(path)
    if overrides:
        data = _merge(data, overrides)
    return parse_params(data, source)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_set_option(assignments: list[str]) -> dict[str, Any]:
    """Turn `["validate.min_clip_s=2", ...]` into a nested override dict (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in assignments:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. --set validate.min_clip_s=2")
        key, raw = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return out


# -- slices: the sections one step reads -------------------------------------------------------------------------


def section_names() -> tuple[str, ...]:
    """Every section of params.yaml, as written there (`validate`, not the attribute name `validate_`)."""
    return tuple(info.alias or name for name, info in Params.model_fields.items())


def _attribute(section: str) -> str:
    for name, info in Params.model_fields.items():
        if section in (name, info.alias):
            return name
    raise ConfigError(f"params.yaml has no section {section!r}; its sections are {', '.join(section_names())}")


def params_slice(params: Params, sections: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """The values of `sections` only, as plain data ({section: {key: value}}), e.g. one pipeline step's settings."""
    return {section: getattr(params, _attribute(section)).model_dump(by_alias=True, mode="json")
            for section in sections}


class _SectionOutsideSlice:
    """Stands in for a section a step was not given: reading any of its keys fails, naming the step and the
    section, so a step table that forgets a section fails loudly the first time the step runs."""

    def __init__(self, section: str, reader: str) -> None:
        self._section, self._reader = section, reader

    def __getattr__(self, key: str):
        if key.startswith("__"):
            raise AttributeError(key)
        raise ConfigError(f"{self._reader} read params.{self._section}.{key}, but '{self._section}' is not among the "
                          f"settings it was given: add '{self._section}' to its sections in the step table "
                          "(components/__init__.py, STEPS)")

    def __repr__(self) -> str:
        return f"<{self._section}: not in {self._reader}'s slice>"


def params_from_slice(data: dict[str, Any], reader: str) -> Params:
    """Params holding only the sections in `data` (validated as params.yaml is); every other section refuses to be
    read (ConfigError naming `reader` and the section). What a pipeline step runs with."""
    if not isinstance(data, dict):
        raise ConfigError(f"{reader}: its settings must be a mapping of sections, got {type(data).__name__}")
    full = parse_params(data, f"{reader}'s settings")
    given = {_attribute(section) for section in data}
    values = {name: getattr(full, name) if name in given else _SectionOutsideSlice(info.alias or name, reader)
              for name, info in Params.model_fields.items()}
    return Params.model_construct(**values)


def sections_of(params: Params) -> tuple[str, ...]:
    """The sections `params` holds (all of them, unless it came from `params_from_slice`)."""
    return tuple(info.alias or name for name, info in Params.model_fields.items()
                 if not isinstance(getattr(params, name), _SectionOutsideSlice))


def defaults_yaml() -> str:
    """Every key with its default and its description as a comment (what `narrator config --defaults` prints)."""
    lines = []
    defaults = Params().model_dump(by_alias=True, mode="json")
    for name, field in Params.model_fields.items():
        section = field.alias or name
        lines.append(f"{section}:  # {(field.annotation.__doc__ or '').strip().splitlines()[0]}")
        for key, info in field.annotation.model_fields.items():
            value = yaml.safe_dump(defaults[section][key], default_flow_style=True, width=1000).strip()
            value = value.removesuffix("\n...").strip()
            comment = f"  # {info.description}" if info.description else ""
            lines.append(f"  {key}: {value}{comment}")
    return "\n".join(lines) + "\n"

