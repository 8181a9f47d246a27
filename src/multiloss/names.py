"""The names a user meets in MLflow, each defined once: experiments, registered models, aliases and
tag keys. Renaming one here renames it everywhere; a store written under the old name keeps it."""

# Experiments, one per stage family.
DATA_EXPERIMENT = "data"
SEGMENTATION_EXPERIMENT = "segmentation"
CLASSIFICATION_EXPERIMENT = "classification"
SWEEPS_EXPERIMENT = "sweeps"
ENSEMBLES_EXPERIMENT = "ensembles"
PIPELINE_EXPERIMENT = "pipeline"
ABLATION_EXPERIMENT = "ablation"
PROMOTIONS_EXPERIMENT = "promotions"          # one run per alias move by promote
EXPERIMENTS = (DATA_EXPERIMENT, SEGMENTATION_EXPERIMENT, CLASSIFICATION_EXPERIMENT, SWEEPS_EXPERIMENT,
               ENSEMBLES_EXPERIMENT, PIPELINE_EXPERIMENT, ABLATION_EXPERIMENT, PROMOTIONS_EXPERIMENT)

# Registered models.
SEGMENTATION_MODEL = "cxr-lung-seg"
CLASSIFIER_MODEL = "cxr-classifier"
ENSEMBLE_MODEL = "cxr-ensemble"

# Aliases: the best version, the ranked ones, and a choice made on the test split (never the champion).
CHAMPION = "champion"
TOP_PREFIX = "top"
TEST_SELECTED = "test_selected"


def top_alias(position: int) -> str:
    """``top1``, ``top2``, ...: the version ranked at ``position`` (from 1)."""
    return f"{TOP_PREFIX}{position}"


def data_alias(alias: str, data_fingerprint: str) -> str:
    """``champion-1a2b3c4d``: the alias a version of other data gets where ``alias`` belongs to a
    version trained on different data (taking it needs ``force``)."""
    return f"{alias}-{data_fingerprint[:8]}"


# Per-epoch curves are logged under names of their own ("epoch/val_loss"): a run's latest value of
# a final-score name ("val_loss", "val_accuracy") is then always the kept model's, not the last epoch's.
EPOCH_CURVE_PREFIX = "epoch/"


# Tags on runs and model versions.
STAGE_TAG = "stage"                          # the entry point that made a run
LOSS_TAG = "loss"
DATA_FINGERPRINT_TAG = "data_fingerprint"    # content hash of the images a model was trained on
IMG_SIZE_TAG = "img_size"
CODE_VERSION_TAG = "code_version"            # hash of the source an entry point runs
INPUT_FINGERPRINT_TAG = "input_fingerprint"  # hash of a step's input data and model versions

MCC_INTERVAL_TAG = "mcc_interval"            # what the logged mcc_low/mcc_high are (metrics.MCC_INTERVAL_LABELS)

# The versions a segment_eval run chose (best first, comma-separated): crop and the pipeline read them.
TOP_VERSIONS_TAG = "top_versions"

# Tags of ensemble runs, read by the report and the pipeline.
SELECT_ON_TAG = "select_on"                  # the split members and the best ensemble were chosen on
TEST_SELECTED_TAG = "test_selected"          # "true" when that split was test (the paper's choice)
BEST_ENSEMBLE_TAG = "best_ensemble"
MODEL_LEVEL_URI_TAG = "model_level_uri"      # the best model-level ensemble's logged model

# A data-writing run (synth, crop) that found its output already written and kept it.
REUSED_DATA_TAG = "reused_existing_data"

# Tags of a pipeline's parent run and its steps.
STEP_TAG = "pipeline.step"
PROCESS_TAG = "pipeline.process"             # which process ran a step: main, worker 1, ...
ALIASES_TAG = "pipeline.aliases"
HOST_TAG, PID_TAG, PID_START_TAG = "pipeline.host", "pipeline.pid", "pipeline.pid_start"
BOOT_TAG = "pipeline.boot_id"                 # with the host: which machine the pid is of

# What a model or run reproduces of the published code (multiloss.variants): the variant asked for
# (``corrected``, ``published`` or flaw names joined by "+") and the flaws that acted on it.
VARIANT_TAG = "variant"
FLAWS_TAG = "variant.flaws"

# A model whose validation predictions are one class, or whose confidence there stays at 1/C:
# named, and left out of pools unless asked for (reason in DEGENERATE_REASON_TAG).
DEGENERATE_TAG = "degenerate"
DEGENERATE_REASON_TAG = "degenerate.reason"

# The MLflow UI opens an experiment in the mode its kind tag names: ours are model training (runs,
# metrics, models), not GenAI (traces, evaluations). A kind the UI only inferred may be replaced.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
INFERRED_EXPERIMENT_KINDS = ("genai_development_inferred", "custom_model_development_inferred", "no_inferred_type")


# An ensemble run's metric names are the same in every run, so runs compare on them: an ensemble's
# scores as ``top3.majority.mcc`` (``top3_5.model_level_weighted.mcc`` for one over the top-3 and top-5
# model-level ensembles), its curves as ``epoch/top3.model_level.loss``, a member's as
# ``member.cal_cce.mcc`` (``member.cal_cce_2`` for a second member of one loss). Which version a
# member is goes in the run's param of that name (``member.cal_cce``), never in a metric name.
MEMBER_PREFIX = "member"


def ensemble_metric_prefix(kind: str, sizes) -> str:
    """``top3.majority``: the metric prefix of the ensemble of ``kind`` over the top ``sizes``
    members (several sizes for an ensemble of ensembles: ``top3_5.model_level_weighted``)."""
    return f"top{'_'.join(str(k) for k in sizes)}.{kind}"


def member_metric_prefix(key: str) -> str:
    """``member.cal_cce``: the metric prefix (and param name) of the member ``key`` (its loss)."""
    return f"{MEMBER_PREFIX}.{key}"

# Whether a model or run was trained on the built-in synthetic phantoms ("true"/"false"): such a
# model is no chest X-ray classifier, and its card, its version's tags and its served answers say so.
SYNTHETIC_TAG = "data.synthetic"
# MLflow's own tag for a run's description (the UI's "Description" box).
NOTE_TAG = "mlflow.note.content"
# The run inputs' contexts (MLflow's Datasets column): which split a logged dataset is.
DATASET_CONTEXTS = ("train", "validation", "test")
