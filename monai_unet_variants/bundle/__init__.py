"""Helpers that the MONAI bundles under ``bundles/`` call from their configs, by concern:

- ``datalists``: the bundle's own folder, MSD-style datalists (NIfTI files or DICOM series folders), the split;
- ``command_line``: an option that the command's config does not have or read (which MONAI would ignore) refused;
- ``checks``: every file checked before any work starts, every loaded case checked, messages that name the file;
- ``transforms``: ``MetaSafeSpacingd`` (MONAI Label's ``image_path`` left alone), ``OriginalGridd`` (evaluation on
  each case's own grid), ``SlabAsDiscreted`` (the argmax of the class scores without torch's slow CPU path);
- ``handlers``: validation after the last epoch, per-class metric selection;
- ``checkpoints``: atomic saves, loads with clear errors, the best metric in the resumable state;
- ``caching``: preprocessed cases within a memory budget, the rest in a persistent on-disk cache;
- ``metrics``: per-case Dice and HD95 tables;
- ``syncfree``: the training iteration's decollation, Dice and loss lines without host reads of device values;
- ``losses``: MONAI's deep-supervision loss for the family's stacked output (``MainOutputd`` gives the metrics
  the main output).

Every name is importable from ``monai_unet_variants.bundle`` itself, the path the configs' ``_target_`` use.
"""

from .caching import CacheBudget, Uncached
from .checkpoints import (
    LATEST_CHECKPOINT,
    AtomicCheckpointSaver,
    BestMetricState,
    OutputError,
    RandomStates,
    SafeCheckpointLoader,
    atomic_write,
    check_checkpoint,
    export_checkpoint,
    sweep_temporaries,
)
from .checks import (
    BadCaseError,
    CheckCased,
    CheckedCacheDataset,
    CheckedThreadDataLoader,
    SkippedCasesReport,
    check_inputs,
    nifti_reader,
)
from .command_line import check_option_names
from .datalists import find_bundle_root, inference_inputs, list_test_images, load_datalist, test_inputs
from .dicom import DicomSeriesError, check_dicom_folder
from .errors import summarize_errors
from .handlers import FinalValidationHandler, end_distributed, quiet_other_ranks, select_class
from .history import TrainingHistory
from .losses import StackedDeepSupervisionLoss
from .metrics import PerCaseMetricsWriter
from .syncfree import (
    HOST_READS,
    DecollateOnDevice,
    HostRead,
    SyncFreeDiceMetric,
    SyncFreeMeanDice,
    every_n_iterations,
    host_reads,
    tracking_follows_log_interval,
)
from .training_options import (
    TRAINING_OPTIONS,
    TrainingOptionsState,
    check_trained_options,
    record_training_options,
    trained_option,
)
from .outputs import OutputsReport, SegmentationWriter, claim_training_folders, output_names
from .transforms import (
    EVAL_SPACES,
    InPlaceSoftmaxd,
    MainOutputd,
    MetaSafeSpacingd,
    OriginalGridd,
    PatchPadd,
    SlabAsDiscreted,
    channel_argmax,
    eval_space,
)

__all__ = [
    "LATEST_CHECKPOINT",
    "AtomicCheckpointSaver",
    "BadCaseError",
    "BestMetricState",
    "CacheBudget",
    "CheckCased",
    "CheckedCacheDataset",
    "CheckedThreadDataLoader",
    "DecollateOnDevice",
    "DicomSeriesError",
    "HOST_READS",
    "HostRead",
    "FinalValidationHandler",
    "EVAL_SPACES",
    "MainOutputd",
    "InPlaceSoftmaxd",
    "MetaSafeSpacingd",
    "OriginalGridd",
    "PatchPadd",
    "OutputError",
    "OutputsReport",
    "PerCaseMetricsWriter",
    "RandomStates",
    "SafeCheckpointLoader",
    "SegmentationWriter",
    "SkippedCasesReport",
    "SlabAsDiscreted",
    "StackedDeepSupervisionLoss",
    "SyncFreeDiceMetric",
    "SyncFreeMeanDice",
    "TRAINING_OPTIONS",
    "TrainingHistory",
    "TrainingOptionsState",
    "Uncached",
    "atomic_write",
    "check_checkpoint",
    "check_option_names",
    "check_dicom_folder",
    "check_inputs",
    "check_trained_options",
    "claim_training_folders",
    "channel_argmax",
    "eval_space",
    "every_n_iterations",
    "export_checkpoint",
    "find_bundle_root",
    "host_reads",
    "inference_inputs",
    "load_datalist",
    "nifti_reader",
    "output_names",
    "record_training_options",
    "trained_option",
    "tracking_follows_log_interval",
    "end_distributed",
    "quiet_other_ranks",
    "select_class",
    "summarize_errors",
    "sweep_temporaries",
    "list_test_images",
    "test_inputs",  # list_test_images's earlier name, which bundles exported before it changed still call
]
