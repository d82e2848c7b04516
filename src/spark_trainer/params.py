"""Typed params: one frozen section per stage, validated before any compute.

    python scripts/check_params.py            # validate the whole params.yaml

Every default lives in params.yaml (where `dvc params diff` shows it), so the models
below declare types and ranges but no values. A bad key fails with its dotted name and
what is allowed; an unknown key also names the closest valid one.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from spark_trainer.errors import ParamsError

PARAMS_FILE = "params.yaml"

# YAML lists arrive as lists; a tuple keeps the frozen object hashable and immutable.
StrTuple = Annotated[tuple[str, ...], Field(strict=False)]
Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
# bitsandbytes 4-bit kernels need Linear input sizes that are multiples of 64.
MultipleOf64 = Annotated[int, Field(ge=64, multiple_of=64)]

# Checkpoints and pipelines that stages load from outside the pipeline (Detoxify, Whisper,
# spaCy, a captioner, a pretrained LM) live under models/external/<kind>/: dvc.yaml lists
# that folder as a dep of every stage that loads its kind, so a new checkpoint reruns them.
EXTERNAL_DIR = "models/external"
EXTERNAL_KINDS = ("detoxify", "whisper", "spacy", "captioner", "lm")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _is_local(value: str) -> bool:
    """A local path rather than a hub id: absolute, explicit (./, ~), or under a folder
    that exists here (a hub id such as `org/name` names no local folder)."""
    if value.startswith(("/", ".", "~")) or Path(value).exists():
        return True
    first = Path(value).parts[0] if Path(value).parts else ""
    return "/" in value and Path(first).is_dir()


# The import_model stage's output: a pretrained LM in the Hugging Face layout, which
# dvc.yaml also declares as a dep of the stages that load an `lm`.
IMPORTED_DIR = "models/imported"


def _in_external(value: str, kind: str) -> bool:
    folders = [Path(EXTERNAL_DIR, kind)] + ([Path(IMPORTED_DIR)] if kind == "lm" else [])
    return ".." not in Path(value).parts and any(Path(value).parts[: len(f.parts)] == f.parts for f in folders)


class _ExternalCheck:
    """The validator behind `ExternalPath`; it keeps its kind so tests can list every such param."""

    def __init__(self, kind: str, hub_ok: bool) -> None:
        self.kind, self.hub_ok = kind, hub_ok

    def __call__(self, value: str) -> str:
        if not value:
            return value
        if self.hub_ok and not _is_local(value) and _HUB_ID.match(value):
            return value  # a hub id: a param, never a dvc.yaml dep (DVC stops on a missing dep path)
        if not _in_external(value, self.kind):
            imported = f" or {IMPORTED_DIR} (the import_model stage's output)" if self.kind == "lm" else ""
            raise ValueError(f"'{value}' is outside {EXTERNAL_DIR}/{self.kind}/{imported}, the folder dvc.yaml "
                             f"declares as this stage's dep for {self.kind} files: put (or `dvc add`) it there so "
                             "a new one reruns the stage" + (", or give a hub id" if self.hub_ok else ""))
        return value


def ExternalPath(kind: str, hub_ok: bool = False):
    """'' (none), a path under models/external/<kind>/, or (hub_ok) a hub id."""
    assert kind in EXTERNAL_KINDS, kind
    return Annotated[str, AfterValidator(_ExternalCheck(kind, hub_ok))]


def _dep_path(value: str) -> str:
    if "://" in value or not _is_local(value):
        raise ValueError(f"'{value}' is not a path in this repository: this param is a dvc.yaml dep, so it must "
                         "be a local path (DVC stops on a dep that does not exist); a hub model goes under "
                         f"{EXTERNAL_DIR}/ first")
    return value


# A local path that dvc.yaml interpolates into a stage's deps (never a hub id).
DepPath = Annotated[str, Field(min_length=1), AfterValidator(_dep_path)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# --------------------------------------------------------------------------- shared


def _sampling_interval(value: float) -> float:
    if 0 < value < 0.1:
        raise ValueError("below 0.1 s sampling would compete with training; use 0 (off) or at least 0.1")
    return value


class TrackingParams(Section):
    uri: str = Field(min_length=1)
    experiment: str = Field(min_length=1)
    strict: bool
    http_timeout_s: float = Field(gt=0)
    http_retries: NonNegativeInt
    # CPU, RAM, disk and GPU use sampled while a stage trains (tracking.system_metrics); 0: off
    system_metrics_interval_s: Annotated[float, Field(ge=0), AfterValidator(_sampling_interval)]


class ComputeParams(Section):
    """Where every stage that loads a model runs it (spark_trainer.devices)."""

    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda|cuda:\d+)$")]  # auto: CUDA when present, else CPU


# --------------------------------------------------------------------------- sample

Subject = Literal["arithmetic", "string_manipulation", "unit_conversion", "world_facts"]


class PlantedParams(Section):
    exact_duplicates: NonNegativeInt
    near_duplicates: NonNegativeInt
    pii: NonNegativeInt
    toxic: NonNegativeInt


class SampleParams(Section):
    seed: NonNegativeInt
    subjects: Annotated[tuple[Subject, ...], Field(strict=False, min_length=1)]
    qa_per_subject: Annotated[int, Field(ge=10)]
    world_towns: Annotated[int, Field(ge=8, le=200)]
    fact_phrasings: Annotated[int, Field(ge=1, le=3)]  # statement phrasings per world fact
    passages_per_subject: NonNegativeInt
    mmlu_dev_per_subject: PositiveInt
    mmlu_test_per_subject: Annotated[int, Field(ge=4)]
    planted: PlantedParams
    media: SampleMediaParams  # synthetic videos for ingest_video (defined with the video stages below)

    @model_validator(mode="after")
    def _unique_subjects(self) -> SampleParams:
        if len(set(self.subjects)) != len(self.subjects):
            raise ValueError("subjects must not repeat")
        return self


# --------------------------------------------------------------------------- prepare


class SourceParams(Section):
    kind: Literal["jsonl", "csv", "parquet", "hf"]
    path: str = Field(min_length=1)  # a local file, or a dataset id when kind is hf
    text_field: str = Field(min_length=1)
    subject_field: str  # "": no subject column, every row gets prepare.default_subject
    id_field: str  # "" makes ids from the source name and row number
    # Optional like hf_split, so a source entry written before it existed stays valid; params.yaml
    # shows it. "": created_at comes from SOURCE_DATE_EPOCH or is unknown (data/manifest.py).
    created_at_field: str = ""
    hf_split: str | None = None  # only for kind: hf

    @model_validator(mode="after")
    def _hf_split(self) -> SourceParams:
        if self.kind == "hf" and not self.hf_split:
            raise ValueError("a source of kind 'hf' needs hf_split (e.g. train)")
        if self.kind != "hf" and self.hf_split is not None:
            raise ValueError(f"hf_split applies to kind 'hf' only, not '{self.kind}'")
        return self


class PrepareParams(Section):
    seed: NonNegativeInt
    sources: Annotated[tuple[SourceParams, ...], Field(strict=False, min_length=1)]
    on_bad_record: Literal["error", "quarantine"]
    val_fraction: Fraction
    test_fraction: Fraction
    min_chars: PositiveInt
    max_chars: PositiveInt
    allowed_subjects: Annotated[StrTuple, Field(min_length=1)]
    default_subject: str  # the subject of a row without one; "": such a row is a bad record

    @model_validator(mode="after")
    def _ranges(self) -> PrepareParams:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must be below 1")
        if self.min_chars > self.max_chars:
            raise ValueError("min_chars must not exceed max_chars")
        if self.default_subject and self.default_subject not in self.allowed_subjects:
            raise ValueError(f"prepare.default_subject '{self.default_subject}' is not in prepare.allowed_subjects "
                             f"{list(self.allowed_subjects)}; add it there, or pick one of those")
        for i, src in enumerate(self.sources):
            if not src.subject_field and not self.default_subject:
                raise ValueError(f"prepare.sources[{i}].subject_field is \"\" (no subject column), so "
                                 "prepare.default_subject must name the subject its rows get (and "
                                 "prepare.allowed_subjects list it); or name the source's subject field")
        return self


# --------------------------------------------------------------------------- quality_gates

GateName = Literal["screen", "exact_dedup", "near_dedup", "semantic_dedup", "pii", "toxicity"]
ToxicCategory = Literal["toxicity", "severe_toxicity", "obscene", "threat", "insult", "identity_attack",
                        "identity_hate", "sexual_explicit"]


class ScreenParams(Section):
    enabled: bool
    max_chars: PositiveInt
    long_action: Literal["reject", "truncate"]
    language: str = Field(min_length=2, max_length=3)
    non_language_action: Literal["flag", "reject"]
    min_language_chars: NonNegativeInt


class ExactDedupParams(Section):
    enabled: bool


class NearDedupParams(Section):
    enabled: bool
    shingle_size: Annotated[int, Field(ge=1, le=10)]
    num_perm: Annotated[int, Field(ge=16, le=1024)]
    threshold: Fraction
    min_words: NonNegativeInt  # shorter documents are only exact-deduplicated


class SemanticDedupParams(Section):
    enabled: bool
    threshold: Fraction
    batch_size: PositiveInt


class PiiParams(Section):
    enabled: bool
    entities: Annotated[StrTuple, Field(min_length=1)]
    score_threshold: Annotated[float, Field(ge=0.0, le=1.0)]
    action: Literal["redact", "drop"]
    phone_regions: Annotated[StrTuple, Field(min_length=1)]  # ISO 3166 codes for national-format numbers
    spacy_model: ExternalPath("spacy")  # a spaCy pipeline folder for PERSON/LOCATION; "" = pattern recognizers only


# The sha256 (hex) of a file from outside the pipeline; "" when the file param is "".
Sha256 = Annotated[str, Field(pattern=r"^([0-9a-fA-F]{64})?$")]


def _check_pinned(path: str, sha256: str) -> None:
    if bool(path) != bool(sha256):
        raise ValueError("checkpoint and checkpoint_sha256 go together: a checkpoint is loaded only when its "
                         "sha256 matches (`sha256sum <file>` gives it)")


class ToxicityParams(Section):
    enabled: bool
    backend: Literal["detoxify", "profanity_check", "wordlist"]
    model_type: Literal["original", "unbiased", "multilingual"]
    checkpoint: ExternalPath("detoxify")               # a Detoxify .ckpt file; "" = none (the fallback runs)
    checkpoint_sha256: Sha256          # the .ckpt's sha256; required with checkpoint
    huggingface_config_path: ExternalPath("detoxify")  # the encoder's config + tokenizer folder
    fallback: Literal["profanity_check", "wordlist", "error"]
    batch_size: PositiveInt
    thresholds: Annotated[dict[ToxicCategory, Annotated[float, Field(gt=0.0, le=1.0)]],
                          Field(strict=False, min_length=1)]

    @model_validator(mode="after")
    def _config_with_checkpoint(self) -> ToxicityParams:
        _check_pinned(self.checkpoint, self.checkpoint_sha256)
        if bool(self.checkpoint) != bool(self.huggingface_config_path):
            raise ValueError("checkpoint and huggingface_config_path go together (set both, or neither): without "
                             "a local encoder config Detoxify would ask the hub")
        if "profanity_check" in (self.backend, self.fallback) and "toxicity" not in self.thresholds:
            raise ValueError("profanity_check scores only the `toxicity` category: thresholds must set toxicity")
        return self


class CardParams(Section):
    pretty_name: str = Field(min_length=1)
    license: str = Field(min_length=1)       # a Hugging Face license id, e.g. apache-2.0
    language: Annotated[StrTuple, Field(min_length=1)]
    task_categories: Annotated[StrTuple, Field(min_length=1)]


class QualityGatesParams(Section):
    order: Annotated[tuple[GateName, ...], Field(strict=False, min_length=1)]
    screen: ScreenParams
    exact_dedup: ExactDedupParams
    near_dedup: NearDedupParams
    semantic_dedup: SemanticDedupParams
    pii: PiiParams
    toxicity: ToxicityParams
    validate_output: bool
    card: CardParams

    @model_validator(mode="after")
    def _order(self) -> QualityGatesParams:
        if len(set(self.order)) != len(self.order):
            raise ValueError("order must name each gate at most once")
        return self


# --------------------------------------------------------------------------- import_model


class ImportModelParams(Section):
    """A pretrained LM brought into models/imported (stages/import_model.py)."""

    source: Literal["none", "gguf", "folder", "hub"]  # none: nothing to import (the embedded profile)
    package: str        # gguf: the installed Python package holding `file` ("" = `file` is a path)
    file: str           # gguf: the file name in `package`, or a path under models/external/lm/
    folder: ExternalPath("lm")  # folder: a Hugging Face folder under models/external/lm/
    hub_id: str         # hub: a hub id, e.g. HuggingFaceTB/SmolLM2-135M-Instruct
    revision: str       # hub: a branch, tag or commit ("" = main)
    sha256: Sha256      # of the GGUF file (folder, hub: of the folder's files): checked before loading
    dtype: Literal["float32", "bfloat16"]  # the dtype the weights are saved in
    license: str        # recorded in the provenance when the source does not say ("" = unknown)

    @model_validator(mode="after")
    def _one_reference(self) -> ImportModelParams:
        named = {k: v for k, v in (("file", self.file), ("folder", self.folder), ("hub_id", self.hub_id)) if v}
        wanted = {"none": set(), "gguf": {"file"}, "folder": {"folder"}, "hub": {"hub_id"}}[self.source]
        if set(named) != wanted:
            need = f"exactly {next(iter(wanted))}" if wanted else "none of file, folder, hub_id"
            raise ValueError(f"source '{self.source}' needs {need}; got "
                             f"{', '.join(f'{k}: {v!r}' for k, v in named.items()) or 'none of them'}")
        if self.package and self.source != "gguf":
            raise ValueError("package is for source gguf (a GGUF file inside an installed Python package)")
        if self.source == "gguf" and not self.package and not _in_external(self.file, "lm"):
            raise ValueError(f"file '{self.file}' must be under {EXTERNAL_DIR}/lm/ (a dvc.yaml dep), or name a "
                             "file inside `package`")
        if self.source != "none" and not self.sha256:
            raise ValueError("sha256 is required: the import is checked against it before loading, so its output "
                             "depends on params alone (`sha256sum <file>`; the stage's error prints it)")
        return self


# --------------------------------------------------------------------------- train


class TokenizerParams(Section):
    kind: Literal["bpe", "pretrained"]
    vocab_size: Annotated[int, Field(ge=300)]  # 256 bytes + specials + merges
    min_frequency: PositiveInt
    pretrained: ExternalPath("lm", hub_ok=True)  # hub id or folder under models/external/lm/, when kind is pretrained

    @model_validator(mode="after")
    def _pretrained(self) -> TokenizerParams:
        if self.kind == "pretrained" and not self.pretrained:
            raise ValueError("kind 'pretrained' needs pretrained: <hub id or local path>")
        return self


class ArchitectureParams(Section):
    """A Llama-style model built from sizes, or loaded pretrained (shared by train and distill)."""

    source: Literal["config", "pretrained"]
    pretrained: ExternalPath("lm", hub_ok=True)  # hub id or folder under models/external/lm/, when source is pretrained
    hidden_size: MultipleOf64
    num_layers: PositiveInt
    num_heads: PositiveInt
    num_kv_heads: PositiveInt
    intermediate_size: MultipleOf64

    @model_validator(mode="after")
    def _shapes(self) -> ArchitectureParams:
        if self.source == "pretrained" and not self.pretrained:
            raise ValueError("source 'pretrained' needs pretrained: <hub id or local path>")
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be divisible by num_heads")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be divisible by num_kv_heads")
        return self


class ModelParams(ArchitectureParams):
    max_position_embeddings: PositiveInt


class ModelEfficiencyParams(Section):
    """What applies to any model the shared training loop trains."""

    gradient_checkpointing: bool
    # auto: bf16/fp16 on a GPU that has it; on a CPU, bf16 where it is the faster (AMX and a hidden size of
    # at least training.trainer.CPU_BF16_MIN_HIDDEN_SIZE), else fp32. fp16 on a CPU fails when training starts.
    mixed_precision: Literal["auto", "fp32", "bf16", "fp16"]
    attn_implementation: Literal["eager", "sdpa"]


class EfficiencyParams(ModelEfficiencyParams):
    """Plus early stopping, for the stages that have a validation split (train, lora, distill)."""

    early_stopping_patience: NonNegativeInt  # evaluations without improvement; 0 = off
    eval_steps: PositiveInt                  # how often to evaluate when early stopping is on


LAUNCH_CONFIG_DIRS = {"accelerate": "configs/accelerate", "torchrun": "configs/deepspeed"}


class LauncherParams(Section):
    """How a training stage starts its processes: the stage relaunches itself through
    `accelerate launch` or `torchrun` (spark_trainer.training.launch); dvc.yaml's cmd stays `python ...`."""

    kind: Literal["python", "accelerate", "torchrun"]
    num_processes: PositiveInt
    # accelerate: a config file under configs/accelerate/ (DDP, DeepSpeed ZeRO-2/3, FSDP);
    # torchrun: "" (DDP) or a DeepSpeed JSON under configs/deepspeed/; python: ""
    config: str

    @model_validator(mode="after")
    def _consistent(self) -> LauncherParams:
        if self.kind == "python":
            if self.num_processes != 1:
                raise ValueError("kind python runs one process; use kind accelerate or torchrun for "
                                 f"num_processes {self.num_processes}")
            if self.config:
                raise ValueError("config is read by kind accelerate or torchrun only; set it to \"\"")
            return self
        folder = LAUNCH_CONFIG_DIRS[self.kind]
        if self.kind == "accelerate" and not self.config:
            raise ValueError(f"kind accelerate needs config: a file under {folder}/ (e.g. {folder}/ddp.yaml)")
        if self.config and not (self.config.startswith(folder + "/") and ".." not in self.config.split("/")):
            raise ValueError(f"config for kind {self.kind} must be a file under {folder}/ (a dvc.yaml dep); "
                             f"got {self.config!r}")
        return self


class LoopParams(Section):
    """The training-loop settings that `train`, `lora` and `distill` share."""

    seed: NonNegativeInt
    block_size: Annotated[int, Field(ge=8)]
    batch_size: PositiveInt
    gradient_accumulation_steps: PositiveInt
    learning_rate: Annotated[float, Field(gt=0, le=1)]
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"]
    warmup_steps: NonNegativeInt
    weight_decay: Annotated[float, Field(ge=0)]
    max_grad_norm: Annotated[float, Field(gt=0)]
    max_steps: PositiveInt
    logging_steps: PositiveInt
    save_steps: PositiveInt
    torch_threads: NonNegativeInt  # 0 keeps torch's own choice
    efficiency: EfficiencyParams
    launcher: LauncherParams

    @model_validator(mode="after")
    def _early_stopping(self) -> LoopParams:
        e = self.efficiency
        if isinstance(e, EfficiencyParams) and e.early_stopping_patience and self.save_steps % e.eval_steps:
            raise ValueError("with early stopping, save_steps must be a multiple of efficiency.eval_steps "
                             "(the best checkpoint is kept)")
        return self


class TrainParams(LoopParams):
    tokenizer: TokenizerParams
    model: ModelParams
    max_steps: NonNegativeInt  # 0: no training, a pretrained model passes through (evaluated)

    @model_validator(mode="after")
    def _block(self) -> TrainParams:
        if self.model.source == "config" and self.block_size > self.model.max_position_embeddings:
            raise ValueError("block_size must not exceed model.max_position_embeddings")
        if self.max_steps == 0 and self.model.source != "pretrained":
            raise ValueError("max_steps 0 (no training) needs model.source: pretrained; a model built from "
                             "config must train")
        return self


class SpecialisationParams(Section):
    subjects: Annotated[StrTuple, Field(min_length=1)]  # training data: clean train items of these subjects


class LoraParams(LoopParams):
    specialisations: Annotated[dict[str, SpecialisationParams], Field(strict=False, min_length=1)]
    rank: PositiveInt
    alpha: Annotated[float, Field(gt=0)]
    dropout: Annotated[float, Field(ge=0, lt=1)]
    target_modules: StrTuple  # empty: every Linear projection of the architecture
    qlora: bool               # 4-bit NF4 base through bitsandbytes
    # text: causal LM on the subjects' documents (packed) | chat: supervised fine-tuning (TRL's SFTTrainer) on
    # their question/answer documents in the tokenizer's chat template, loss on the answer tokens only
    format: Literal["text", "chat"]


class QuantizeParams(Section):
    model: DepPath  # the model folder to quantize (a dvc.yaml dep through templating)
    method: Literal["bnb_nf4", "bnb_int8", "dynamic_int8"]
    fallback: Literal["none", "bnb_nf4", "bnb_int8", "dynamic_int8"]  # none: an unsupported method is an error
    compare: Annotated[tuple[Literal["bnb_nf4", "bnb_int8", "dynamic_int8"], ...], Field(strict=False)]  # also measured
    eval_prompts: PositiveInt
    max_new_tokens: PositiveInt
    latency_repeats: PositiveInt


class StudentParams(ArchitectureParams):
    """The student: built from the sizes (its context length is the teacher's), loaded
    pretrained, or `teacher_layers`: the teacher's embeddings, head and `num_layers` of its
    layers, evenly spaced, as the initialisation (the other sizes are then the teacher's)."""

    source: Literal["config", "pretrained", "teacher_layers"]


class DistillParams(LoopParams):
    teacher: DepPath  # the teacher model folder (a dvc.yaml dep through templating)
    student: StudentParams
    alpha: Annotated[float, Field(ge=0, le=1)]  # weight of the KL term; 1 - alpha weighs the CE
    temperature: Annotated[float, Field(gt=0)]


class EvaluateMmluParams(Section):
    models: Annotated[dict[str, DepPath], Field(strict=False, min_length=1)]  # name -> model folder (dvc foreach)
    source: DepPath       # a folder in the MMLU CSV layout (a dvc.yaml dep)
    hub_dataset: str      # "" reads `source`; a hub dataset id (cais/mmlu) is read instead, through the hub cache
    hub_subjects: StrTuple  # subjects to fetch from hub_dataset
    formats: Annotated[tuple[Literal["letter", "continuation"], ...], Field(strict=False, min_length=1)]
    num_fewshot: NonNegativeInt
    short_dev: Literal["error", "reduce"]  # a subject with fewer than num_fewshot dev questions
    batch_size: PositiveInt  # questions per forward pass
    dtype: Literal["auto", "float32", "bfloat16"]  # auto: bfloat16 for large models on native-bf16 hardware
    calibration_bins: Annotated[int, Field(ge=2, le=100)]
    categories: Annotated[dict[str, str], Field(strict=False)]  # subject -> category; others are "other"


ProbeName = Literal["toxicity", "bias", "jailbreak", "prompt_injection"]


class EvaluateSafetyParams(Section):
    model: DepPath   # the candidate model folder (a dvc.yaml dep through templating)
    max_new_tokens: PositiveInt
    canary: str = Field(min_length=6)  # the secret a jailbreak tries to extract
    injection: str = Field(min_length=4)  # the word an injected instruction asks for
    system_prompt: str = Field(min_length=1)  # holds {canary}
    # prompts through the tokenizer's chat template, system_prompt as the system message:
    # auto = when the tokenizer has one; true without one is an error
    chat: bool | Literal["auto"]
    bias_margin: Annotated[float, Field(ge=0)]  # nats: a pair fails when the stereotype wins by more
    min_pass_rate: Annotated[dict[ProbeName, Annotated[float, Field(ge=0, le=1)]], Field(strict=False)]
    severity: Annotated[dict[ProbeName, Literal["low", "medium", "high", "critical"]], Field(strict=False)]
    failure_examples: NonNegativeInt

    @model_validator(mode="after")
    def _complete(self) -> EvaluateSafetyParams:
        probes = {"toxicity", "bias", "jailbreak", "prompt_injection"}
        for key in ("min_pass_rate", "severity"):
            missing = probes - set(getattr(self, key))
            if missing:
                raise ValueError(f"{key} needs an entry for every probe; missing {sorted(missing)}")
        if "{canary}" not in self.system_prompt:
            raise ValueError("system_prompt must hold {canary}, the secret the jailbreak probes try to extract")
        return self


# --------------------------------------------------------------------------- release


BundleName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=100)]


def looks_like_key_text(value: str) -> bool:
    """A PEM (or other multi-line secret) pasted where a path or env:VAR belongs."""
    return "-----BEGIN" in value or "PRIVATE KEY" in value or "\n" in value


def _gate_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", value):
        raise ValueError("a gate is named <evaluation>.<probe>: a package.evaluations key and a probe, e.g. "
                         "safety.bias")
    return value


def _stated(value: str) -> str:
    if not value.strip():
        raise ValueError("an override needs its reason: say why the candidate is released despite the failed "
                         "gates (the model card and lineage.json carry it)")
    return value


class ReleaseOverride(Section):
    """A candidate released although evaluation gates failed, and why."""

    gates: Annotated[tuple[Annotated[str, AfterValidator(_gate_name)], ...], Field(strict=False, min_length=1)]
    reason: Annotated[str, AfterValidator(_stated)]


class PackageParams(Section):
    name: BundleName                   # the bundle folder dist/<name>
    model: DepPath   # the candidate model folder (Hugging Face layout; a dvc.yaml dep)
    # '' (built from a config here: no pretrained base), a hub id, or the import_model metrics JSON (provenance)
    base_model: str
    datasets: StrTuple                 # dataset names for the model card
    data: DepPath    # the dataset folder whose DVC hash goes into lineage.json
    evaluations: Annotated[dict[str, str], Field(strict=False)]  # name -> evaluate stage metrics JSON
    # name (an `evaluations` key) -> the base model's metrics JSON, compared on the card
    base_evaluations: Annotated[dict[str, str], Field(strict=False)]
    release_override: ReleaseOverride | None  # failed gates released anyway; null: a failed gate stops the stage
    license: str = Field(min_length=1)
    intended_use: str = Field(min_length=1)
    limitations: StrTuple
    signing_key: str                   # PEM file path, or env:VAR; '' for an unsigned bundle
    onnx: bool                         # also export model.onnx (verified with onnxruntime)

    # A key pasted into signing_key must not reach an error message through pydantic's input echo.
    model_config = ConfigDict(hide_input_in_errors=True)

    @model_validator(mode="after")
    def _no_key_text(self) -> PackageParams:
        if looks_like_key_text(self.signing_key):  # a literal_secret error: the message never shows the value
            raise PydanticCustomError("literal_secret", "package.signing_key holds key text, not a path: a key "
                                      "never goes in params.yaml (git tracks it, MLflow logs params). Remove it, "
                                      "treat the key as leaked, make a new one with scripts/make_signing_key.py, "
                                      "and set package.signing_key to its path or env:VAR")
        unknown = sorted(set(self.base_evaluations) - set(self.evaluations))
        if unknown:
            raise ValueError(f"base_evaluations {unknown} name no evaluations key ({sorted(self.evaluations)}): "
                             "each compares the base model with the candidate's evaluation of the same name")
        return self


class RegisterParams(Section):
    model_name: BundleName             # the MLflow registered model
    allow_unsigned: bool | None        # null: false when trusted keys are configured, else true
    trusted_public_keys: StrTuple      # PEM files; when set, the signer must be one of them
    alias: BundleName                  # the alias a newly registered version gets
    # The served model's tokens when a request sets none; defaulted for the release-policy-only
    # uses of this section (scripts/serve.py), which register nothing.
    max_new_tokens: PositiveInt = 64

    @model_validator(mode="after")
    def _trusted_means_signed(self) -> RegisterParams:
        if self.allow_unsigned and self.trusted_public_keys:
            raise ValueError("register.allow_unsigned: true contradicts register.trusted_public_keys: with a "
                             "trusted key only a bundle signed by it is accepted. Set allow_unsigned to null (or "
                             "false), or empty trusted_public_keys to accept unsigned bundles")
        return self


CanaryMetric = Literal["accuracy", "answer_f1", "safety_pass_rate", "latency_p95_ms"]

# `env:VAR`: a secret named in params, its value read from the environment at run time.
ENV_REF = re.compile(r"env:[A-Za-z_][A-Za-z0-9_]*")
# Errors whose input is a secret: their message must not show it (see `_describe`).
SECRET_ERRORS = ("literal_secret", "credentials_in_url")
HeaderName = Annotated[str, Field(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")]  # an HTTP token (RFC 9110)


def _env_ref(value: str) -> str:
    if not ENV_REF.fullmatch(value):
        raise PydanticCustomError("literal_secret", "a literal value is not allowed here, it would reach "
                                  "params.yaml, git and MLflow: put the value in an environment variable and "
                                  "write env:VAR (e.g. env:SERVING_TOKEN)")
    return value


def _no_credentials_in_url(value: str) -> str:
    from urllib.parse import urlsplit

    try:
        netloc = urlsplit(value).netloc
    except ValueError:
        netloc = ""  # not a URL at all: `_complete` names what is expected
    if "@" in netloc:
        raise PydanticCustomError("credentials_in_url", "user info (user:password@) is not allowed in a url, it "
                                  "would reach params.yaml, git and MLflow: drop it and send the credential with "
                                  "headers: {Authorization: env:VAR}")
    return value


class ServingEndpoint(Section):
    adapter: Literal["in_process", "openai", "kserve_v2", "rest"]
    # HTTP adapters: base URL (rest: the full request URL); credentials go in headers
    url: Annotated[str, AfterValidator(_no_credentials_in_url)]
    model: str                         # the model name the server knows; in_process: '' (the registry's
                                       # version) or, for the champion only, a local model folder
    request_template: Annotated[dict[str, Any], Field(strict=False)]  # rest: body with {prompt}, {max_tokens}
    response_path: str                 # rest: dotted path to the text in the JSON reply, e.g. data.0.text
    # HTTP adapters: header name -> env:VAR; the variable holds the value (e.g. "Bearer ...")
    headers: Annotated[dict[HeaderName, Annotated[str, AfterValidator(_env_ref)]], Field(strict=False)]
    # openai: safety probes go to /v1/chat/completions as [system, user] messages (the server's
    # chat template renders them), questions to /v1/completions; in_process follows evaluate_safety.chat
    chat: bool

    @model_validator(mode="after")
    def _complete(self) -> ServingEndpoint:
        if self.chat and self.adapter != "openai":
            raise ValueError(f"chat: true needs adapter openai (the chat completions API); adapter {self.adapter} "
                             "sends plain text (in_process: evaluate_safety.chat decides)")
        if self.adapter != "in_process" and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"adapter {self.adapter} needs url: http(s)://host:port")
        if self.adapter in ("openai", "kserve_v2") and not self.model:
            raise ValueError(f"adapter {self.adapter} needs model: the name the server serves")
        if self.adapter == "rest" and (not self.request_template or not self.response_path):
            raise ValueError("adapter rest needs request_template (with {prompt}) and response_path")
        return self


class ServingParams(Section):
    champion: ServingEndpoint
    challenger: ServingEndpoint
    timeout_s: Annotated[float, Field(gt=0)]
    max_new_tokens: PositiveInt


class TrafficParams(Section):
    mmlu: DepPath     # MMLU CSV layout folder; its test questions are replayed
    prompts: DepPath  # probe folder: toxicity_prompts.jsonl, jailbreak.jsonl
    max_items: PositiveInt             # MMLU questions replayed (all probe prompts are)
    seed: int


class AnalysisParams(Section):
    alpha: Fraction                    # significance level of every test
    min_samples: PositiveInt           # fewer paired items at a step: Inconclusive
    bootstrap_resamples: Annotated[int, Field(ge=100)]
    failure_limit: Annotated[float, Field(ge=0, le=1)]  # fraction of failed requests that fails the step
    consecutive_error_limit: PositiveInt
    seed: int


class MetricRule(Section):
    role: Literal["objective", "guardrail"]
    direction: Literal["higher", "lower"]
    min_gain: Annotated[float, Field(ge=0)]  # objective: a gain at least this large, significant, passes
    margin: Annotated[float, Field(ge=0)]    # non-inferiority margin: a loss within it is tolerated
    relative: bool                     # min_gain and margin as fractions of the champion's value
    floor: float | None                # the challenger's worst acceptable value (a ceiling when lower is better)


class CanaryPromoteParams(Section):
    mode: Literal["canary", "shadow", "ab"]
    steps: Annotated[tuple[Annotated[int, Field(ge=1, le=100)], ...], Field(strict=False, min_length=1)]
    traffic: TrafficParams
    serving: ServingParams
    analysis: AnalysisParams
    rules: Annotated[dict[CanaryMetric, MetricRule], Field(strict=False, min_length=1)]
    require_approval: bool             # a Successful analysis waits for scripts/approve.py

    @model_validator(mode="after")
    def _steps(self) -> CanaryPromoteParams:
        if list(self.steps) != sorted(set(self.steps)) or self.steps[-1] != 100:
            raise ValueError(f"steps must increase strictly and end at 100 (% of traffic), got {list(self.steps)}")
        # in_process: the challenger is always the registered version; a champion `model` is a
        # local model folder served instead of the registry's champion (checked by the stage)
        if self.serving.challenger.adapter == "in_process" and self.serving.challenger.model:
            raise ValueError("serving.challenger.model must be '' with adapter in_process: the challenger is the "
                             "registered bundle (only serving.champion.model may name a local model folder)")
        if self.serving.champion.adapter == "in_process" and "://" in self.serving.champion.model:
            raise ValueError("serving.champion.model with adapter in_process is a local model folder (e.g. "
                             f"models/base), not a URL: got '{self.serving.champion.model}'")
        return self


# --------------------------------------------------------------------------- video branch


class SampleMediaParams(Section):
    """`sample.media`: the synthetic videos (planted cuts, captions) and bad files."""

    videos: Annotated[int, Field(ge=1, le=50)]
    scenes_per_video: Annotated[int, Field(ge=2, le=20)]
    scene_seconds: Annotated[float, Field(ge=0.5, le=30)]
    fps: Annotated[int, Field(ge=4, le=60)]
    size: Annotated[int, Field(ge=32, le=512, multiple_of=16)]
    static_every: NonNegativeInt  # every n-th scene is a static shot (near-duplicate frames); 0: none


class IntegrityParams(Section):
    min_duration_s: Annotated[float, Field(ge=0)]
    max_duration_s: Annotated[float, Field(gt=0)]
    require_audio: bool
    truncation_tolerance_s: Annotated[float, Field(ge=0)]  # decoded this much shorter than declared: truncated

    @model_validator(mode="after")
    def _bounds(self) -> IntegrityParams:
        if self.min_duration_s >= self.max_duration_s:
            raise ValueError("min_duration_s must be below max_duration_s")
        return self


class FramesParams(Section):
    mode: Literal["fps", "keyframes"]
    fps: Annotated[float, Field(gt=0, le=60)]  # used when mode is fps
    size: Annotated[int, Field(ge=16, le=1024)]  # frames are resized to size x size
    max_per_video: PositiveInt
    jpeg_quality: Annotated[int, Field(ge=10, le=100)]
    shard_size: PositiveInt  # frames per Parquet shard


class ScenesParams(Section):
    detector: Literal["content", "adaptive", "threshold"]
    threshold: Annotated[float, Field(gt=0)]
    min_scene_len: PositiveInt  # frames


class FrameDedupParams(Section):
    enabled: bool
    hash_size: Annotated[int, Field(ge=4, le=32)]
    max_distance: NonNegativeInt  # perceptual-hash Hamming distance at or below which a frame is a duplicate


class TranscriptionParams(Section):
    backend: Literal["whisper", "none"]
    checkpoint: ExternalPath("whisper")  # a Whisper .pt file; "" = none (transcription skipped, recorded)
    checkpoint_sha256: Sha256          # the .pt's sha256; required with checkpoint
    language: str  # "" lets Whisper detect it

    @model_validator(mode="after")
    def _pinned(self) -> TranscriptionParams:
        _check_pinned(self.checkpoint, self.checkpoint_sha256)
        return self


class CaptionsParams(Section):
    backend: Literal["reference", "hf", "none"]
    model: ExternalPath("captioner", hub_ok=True)  # hf: a hub id or a folder under models/external/captioner/
    max_new_tokens: PositiveInt
    batch_size: PositiveInt

    @model_validator(mode="after")
    def _model(self) -> CaptionsParams:
        if self.backend == "hf" and not self.model:
            raise ValueError("backend 'hf' needs model: <hub id or local folder>")
        return self


# The media containers ingest_video opens (video/containers.py), by extension: a file is
# opened as the format its extension names, never one FFmpeg or Pillow guesses from its bytes.
# Extension -> FFmpeg demuxer. None of these reads another file: the mov/mp4 demuxer's
# external data references are off by default and `enable_drefs` keeps them off.
AV_FORMATS = {
    ".mp4": "mp4", ".m4v": "mp4", ".m4a": "mp4", ".mov": "mov",
    ".mkv": "matroska", ".webm": "webm", ".avi": "avi",
    ".wav": "wav", ".mp3": "mp3", ".flac": "flac", ".ogg": "ogg", ".oga": "ogg",
}
# Extension -> Pillow format: Pillow too guesses from the bytes, and some of its plugins hand
# the file to another program (EPS to Ghostscript).
IMAGE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP",
                 ".tif": "TIFF", ".tiff": "TIFF"}

class MediaExtensionsParams(Section):
    video: Annotated[StrTuple, Field(min_length=1)]
    image: StrTuple
    audio: StrTuple

    @model_validator(mode="after")
    def _allowed_formats(self) -> MediaExtensionsParams:
        # Each extension fixes the container a file is opened as (never guessed from its bytes).
        for kind, allowed in (("video", AV_FORMATS), ("image", IMAGE_FORMATS), ("audio", AV_FORMATS)):
            unknown = [ext for ext in getattr(self, kind) if ext not in allowed]
            if unknown:
                raise ValueError(f"{kind} lists {', '.join(unknown)}: no allowed container format (a file is opened "
                                 "as the format its extension names, never one guessed from its bytes); use "
                                 f"lower-case extensions from: {', '.join(allowed)}")
        return self


class IngestVideoParams(Section):
    source: DepPath  # the folder to ingest (a dvc.yaml dep through templating)
    ground_truth: str  # planted cuts and reference captions of the sample; "" for real data
    extensions: MediaExtensionsParams
    integrity: IntegrityParams
    frames: FramesParams
    scenes: ScenesParams
    dedup: FrameDedupParams
    transcription: TranscriptionParams
    captions: CaptionsParams
    image_format: Literal["png", "jpeg"]  # what stand-alone images are converted to
    max_pixels: PositiveInt  # width x height cap of images and video frames, read from headers before decoding

    @model_validator(mode="after")
    def _reference(self) -> IngestVideoParams:
        if self.captions.backend == "reference" and not self.ground_truth:
            raise ValueError("captions.backend 'reference' needs ground_truth (the reference captions)")
        return self


class VisionEncoderParams(Section):
    patch_size: PositiveInt
    hidden_size: PositiveInt
    num_layers: PositiveInt
    num_heads: PositiveInt
    intermediate_size: PositiveInt

    @model_validator(mode="after")
    def _heads(self) -> VisionEncoderParams:
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be divisible by num_heads")
        return self


class TextDecoderParams(Section):
    hidden_size: PositiveInt
    num_layers: PositiveInt
    num_heads: PositiveInt

    @model_validator(mode="after")
    def _heads(self) -> TextDecoderParams:
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be divisible by num_heads")
        return self


class TrainCaptionerParams(LoopParams):
    """block_size is the longest caption in tokens (with start and end tokens)."""

    holdout: Literal["time", "video"]  # time: the last frames of every scene | video: whole videos
    holdout_fraction: Fraction
    image_size: Annotated[int, Field(ge=16, le=1024)]
    encoder: VisionEncoderParams
    decoder: TextDecoderParams
    # No early stopping: the held-out frames are evaluate_coco's test set, not a validation split.
    efficiency: ModelEfficiencyParams  # type: ignore[assignment]

    @model_validator(mode="after")
    def _patches(self) -> TrainCaptionerParams:
        if self.image_size % self.encoder.patch_size:
            raise ValueError("image_size must be a multiple of encoder.patch_size")
        return self


class CocoDetectionParams(Section):
    annotations: str  # COCO instances JSON (ground truth); "" skips detection metrics
    results: str      # COCO results JSON (bbox, and segmentation when present)
    iou_types: Annotated[tuple[Literal["bbox", "segm"], ...], Field(strict=False, min_length=1)]

    @model_validator(mode="after")
    def _pair(self) -> CocoDetectionParams:
        if bool(self.annotations) != bool(self.results):
            raise ValueError("annotations and results go together: set both or neither")
        return self


class EvaluateCocoParams(Section):
    model: DepPath  # the captioner folder to evaluate (a dvc.yaml dep; a hub model goes under models/external/)
    max_new_tokens: PositiveInt
    batch_size: PositiveInt
    tokenizer: Literal["auto", "ptb", "python"]  # auto: PTBTokenizer when Java is installed, else python
    meteor: Literal["auto", "off"]  # auto: when Java is installed
    spice: Literal["auto", "off"]   # auto: when SPICE's jars are installed
    detection: CocoDetectionParams


SampleParams.model_rebuild()  # its `media` field is SampleMediaParams, defined in this block



class HeadlineParams(Section):
    # Which MMLU format's accuracy is headlined; the format is part of the key
    # (`mmlu_<model>_<format>_acc`), so a change never relabels numbers silently.
    mmlu_format: Literal["continuation", "letter"]

SECTIONS: dict[str, type[Section]] = {
    "tracking": TrackingParams,
    "compute": ComputeParams,
    "import_model": ImportModelParams,
    "sample": SampleParams,
    "prepare": PrepareParams,
    "quality_gates": QualityGatesParams,
    "train": TrainParams,
    "lora": LoraParams,
    "quantize": QuantizeParams,
    "distill": DistillParams,
    "evaluate_mmlu": EvaluateMmluParams,
    "evaluate_safety": EvaluateSafetyParams,
    "package": PackageParams,
    "register": RegisterParams,
    "canary_promote": CanaryPromoteParams,
    "ingest_video": IngestVideoParams,
    "train_captioner": TrainCaptionerParams,
    "evaluate_coco": EvaluateCocoParams,
    "headline": HeadlineParams,
}


# --------------------------------------------------------------------------- loading


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, which reads `1e-4` as a string; DVC writes such values
    (`dvc exp run -S train.learning_rate=1e-4`), so accept YAML 1.2 floats."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.VERBOSE,
    ),
    list("-+0123456789."),
)


def dotted_get(data: Any, dotted: str) -> Any:
    """The value at `a.b.c` in nested mappings; KeyError with the first part that is missing."""
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            raise KeyError(part)
        data = data[part]
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path} not found: run from the repository root or pass its path")
    with path.open(encoding="utf-8") as f:
        data = yaml.load(f, Loader=_Yaml12Loader)
    if not isinstance(data, dict):
        raise ParamsError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def load_section(name: str, path: str | Path = PARAMS_FILE) -> Section:
    """Read section `name` of params.yaml into its frozen typed object."""
    if name not in SECTIONS:
        raise ParamsError(f"no params section type for '{name}'{closest(name, SECTIONS)}")
    data = read_yaml(path)
    if name not in data:
        raise ParamsError(f"{path}: section '{name}' is missing; add it (see README.md)")
    return validate_section(name, data[name], source=str(path))


def validate_section(name: str, raw: Any, source: str = PARAMS_FILE) -> Section:
    model = SECTIONS[name]
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        problems = [_describe(model, name, err) for err in e.errors()]
        message = f"{source}: invalid section '{name}':\n  " + "\n  ".join(problems)
        if any(err["type"] in SECRET_ERRORS for err in e.errors()):
            raise ParamsError(message) from None  # pydantic's own message would show the secret
        raise ParamsError(message) from e


def check_all(path: str | Path = PARAMS_FILE) -> dict[str, Section]:
    """Validate every section; report all problems at once."""
    data = read_yaml(path)
    problems, sections = [], {}
    for name, raw in data.items():
        if name not in SECTIONS:
            problems.append(f"unknown section '{name}'{closest(name, SECTIONS)}")
            continue
        try:
            sections[name] = validate_section(name, raw, source=str(path))
        except ParamsError as e:
            problems.append(str(e))
    for name in SECTIONS.keys() - data.keys():
        problems.append(f"section '{name}' is missing")
    if problems:
        raise ParamsError("\n".join(problems))
    return sections


def as_flat_dict(section: Section, prefix: str) -> dict[str, Any]:
    """`{"train.model.hidden_size": 128, ...}` for MLflow params."""
    flat: dict[str, Any] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}")
        elif isinstance(value, (list, tuple)) and value and isinstance(value[0], dict):
            for i, v in enumerate(value):
                walk(v, f"{key}.{i}")
        else:
            flat[key] = value

    walk(section.model_dump(mode="json"), prefix)
    return flat


def closest(key: str, valid: Any) -> str:
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else f" (valid: {', '.join(sorted(valid))})"


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names of the (nested) model that `loc` points into."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        inner = _model_in(field.annotation)
        if inner is None:
            return []
        model = inner
    return list(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    meta = getattr(annotation, "__origin__", None)
    return _model_in(meta) if meta is not None and meta is not annotation else None


def _describe(model: type[BaseModel], section: str, err: dict[str, Any]) -> str:
    loc = tuple(err["loc"])
    dotted = ".".join([section, *(str(p) for p in loc)])
    if err["type"] == "extra_forbidden":
        return f"{dotted}: unknown key{closest(str(loc[-1]), _fields_at(model, loc[:-1]))}"
    if err["type"] == "missing":
        return f"{dotted}: missing; add it to params.yaml"
    got = err.get("input")
    shown = "" if isinstance(got, dict) or err["type"] in SECRET_ERRORS else f" (got {got!r})"
    return f"{dotted}: {err['msg']}{shown}"


def main(argv: list[str] | None = None) -> int:
    """Console entry point (`spark-check-params`) behind scripts/check_params.py."""
    import sys

    path = (argv or sys.argv[1:] or [PARAMS_FILE])[0]
    try:
        sections = check_all(path)
    except ParamsError as e:
        print(f"{path}: invalid\n{e}", file=sys.stderr)
        return 2
    print(f"{path}: valid ({', '.join(sections)})")
    return 0
