"""Recipes: one TOML file holds every setting of a competition run (data, folds, features, training, blend).

A recipe has the experiment sections ``[competition]``, ``[folds]``, ``[features]``, ``[train]``,
``[augment]``, ``[speakers]``, ``[blend]``, ``[pseudo]`` and ``[finetune]`` (the fine-tune kind's settings) plus a
top-level ``backbones`` list, and two machine sections kept
apart from them: ``[runtime]`` (device, compile, workers) and ``[paths]`` (runs, submissions and
weights folders), which are not part of any run's identity. Every key has a default, so an empty
file is a valid recipe; unknown keys are refused (a typo must not silently fall back to a default).

A ``backbones`` entry is a timm model name, or ``"name@S"`` for that model trained with
``[train].seed = S`` (:meth:`ensemble.core.entry.Entry.parse`): ``["regnetx_002", "regnetx_002@43"]`` trains
regnetx_002 twice, with the recipe's seed and with seed 43, into ``runs/<recipe>/regnetx_002/``
and ``runs/<recipe>/regnetx_002@43/``. Entries of one model are one blend member, the mean of
its seeds (:meth:`Recipe.members`).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import encoder_sets, frontends, tasks, waveform_augment
from .channels import NAMES as CHANNELS
from .entry import ROUND_MARK, Entry, marks_round
from .errors import RecipeError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class CompetitionConfig:
    """Where the competition folder is and how its tables are named.

    Attributes:
        dir: the folder holding ``train.csv``, ``test.csv``, ``sample_submission.csv`` (and
            optionally ``solution.csv``, the hidden test labels).
        id_col, path_col, label_col: column names in ``train.csv`` / ``test.csv``.
        group_col: the column folds are grouped by (the speaker). Where ``train.csv`` lacks it (or
            it is ``""``), ``[speakers].train`` says what stands in: by default speakers inferred
            from the voices (:func:`ensemble.speaker.speaker_groups.with_train_speakers`); with
            ``[speakers].train = "none"``, plain stratified folds, with a warning that speakers may
            leak across folds.
        audio_root: folder the ``path`` column is relative to; ``""`` means ``dir``.
        classes: class names in output-column order; empty means the class columns of
            ``sample_submission.csv`` if it has them, else the sorted labels of ``train.csv``.
        task: ``multiclass`` (one label per clip, softmax) or ``multilabel`` (space-separated
            class names per clip, one sigmoid per class; see :mod:`ensemble.core.multilabel`).
    """

    dir: str = "data/ravdess"
    id_col: str = "id"
    path_col: str = "path"
    label_col: str = "label"
    group_col: str = "group"
    audio_root: str = ""
    classes: list[str] = field(default_factory=list)
    task: str = "multiclass"


@dataclass
class FoldsConfig:
    """k-fold split: label-stratified and grouped by ``group_col`` (scikit-learn's StratifiedGroupKFold)."""

    n_splits: int = 5
    seed: int = 42


@dataclass
class FeatureConfig:
    """How a clip becomes an image of shape ``(len(channels), height, frames)``.

    Attributes:
        sample_rate: target rate in Hz; clips are resampled to it (soxr, via librosa).
        duration: fixed clip length in seconds after silence trimming (centre crop or centre pad).
        trim_db: leading/trailing frames quieter than ``trim_db`` dB below the peak are dropped
            (``librosa.effects.trim``); 0 disables trimming.
        channels: any of ``mel``, ``chroma``, ``stft``, ``mfcc`` (:data:`CHANNELS`, from
            :mod:`ensemble.core.channels`), one image channel each, in order.
        n_fft, hop_length: STFT window and hop in samples (1024 / 320 = 64 ms / 20 ms at 16 kHz).
        n_mels, fmin, fmax: mel filterbank size and band edges in Hz (fmax 0 = Nyquist).
        n_mfcc: number of MFCC coefficients for the ``mfcc`` channel.
        height: every channel is resized (linear interpolation along frequency) to this many rows.
        top_db: dynamic range in dB of the log channels (``mel``, ``stft``), mapped to [0, 1].
        frontend: ``image`` (default): ens's images above, in [0, 1]; or a pretrained frontend of
            :mod:`ensemble.core.frontends` (``yamnet``, ``efficientat``): that network's own log-mel
            spectrogram, ``(1, n_mels, frames)``, the frontend's values minus its silence floor.
            Such a frontend fixes ``sample_rate``, ``n_fft``, ``hop_length``, ``n_mels``, ``fmin``,
            ``fmax``, ``height`` and ``channels`` (:func:`ensemble.core.frontends.feature_settings`);
            the recipe refuses other values. A backbone pretrained on a frontend gets it from
            :meth:`Recipe.for_backbone` whatever this key says; ``duration`` and ``trim_db`` stay the recipe's.
    """

    sample_rate: int = 16000
    duration: float = 3.5
    trim_db: float = 40.0
    channels: list[str] = field(default_factory=lambda: ["mel", "chroma", "stft"])
    n_fft: int = 1024
    hop_length: int = 320
    n_mels: int = 128
    fmin: float = 20.0
    fmax: float = 0.0
    n_mfcc: int = 40
    height: int = 128
    top_db: float = 80.0
    frontend: str = frontends.IMAGE

    def key(self) -> str:
        """A short hash of every setting: the feature cache's folder name. ``frontend = "image"`` is
        left out of the hash, so the caches of ens's images keep the keys they had before the key existed."""
        settings = dataclasses.asdict(self)
        if settings["frontend"] == frontends.IMAGE:
            del settings["frontend"]
        blob = json.dumps(settings, sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:12]


@dataclass
class AugmentConfig:
    """Audio-safe augmentation (see :mod:`ensemble.inputs.augment`). Every part is off by default.

    Waveform (audiomentations, applied to the fixed-length clip before rendering; ``copies``
    augmented renderings of each training clip are cached and one of the ``copies + 1`` versions,
    the clean one included, is drawn per clip per epoch):

    Attributes:
        copies: augmented renderings per training clip; 0 disables waveform augmentation.
        waveform: the audiomentations transforms applied in order, each
            ``{name = "AddGaussianSNR", p = 0.5, min_snr_db = 15.0, max_snr_db = 40.0}`` (the class
            name and its keyword arguments; omitted ones take audiomentations' defaults), checked
            against the audio-safe allowlist :data:`ensemble.core.waveform_augment.ALLOWED`. Default
            (:data:`ensemble.core.waveform_augment.DEFAULT`): ``TimeStretch`` 0.9-1.1 (signalsmith,
            length kept), ``PitchShift`` +-2 semitones, ``Shift`` up to +-10 % of the clip without
            rollover (what leaves the clip is replaced by silence), ``Gain`` +-6 dB and
            ``AddGaussianSNR`` at 15-40 dB, each with p = 0.5. Recipes and run configurations
            written before this list use twelve flat keys instead (``noise_p``, ``snr_min_db``,
            ``snr_max_db``, ``shift_p``, ``shift_max``, ``gain_p``, ``gain_db``, ``stretch_p``,
            ``stretch_min``, ``stretch_max``, ``pitch_p``, ``pitch_semitones``): :func:`from_dict`
            still reads them, as the list they describe (:func:`ensemble.core.waveform_augment.from_flat`).

    On the batch of images:

    Attributes:
        freq_mask, time_mask: SpecAugment (Park et al. 2019) widest frequency mask in rows and
            time mask in frames (torchaudio ``FrequencyMasking`` / ``TimeMasking``); 0 disables.
        n_masks: masks of each kind per image.
        time_roll: largest random circular shift along time, as a fraction of the frames; 0 disables.
        mixup_alpha: Beta(alpha, alpha) mixup (Zhang et al. 2018) through timm's ``Mixup``; 0 disables.
        image: albumentations transforms, each ``{name = "XYMasking", ...params}``, checked
            against the audio-safe allowlist (:data:`ensemble.inputs.augment.SAFE_IMAGE_TRANSFORMS`).
    """

    copies: int = 0
    waveform: list[dict] = field(default_factory=lambda: copy.deepcopy(waveform_augment.DEFAULT))
    freq_mask: int = 0
    time_mask: int = 0
    n_masks: int = 2
    time_roll: float = 0.0
    mixup_alpha: float = 0.0
    image: list[dict] = field(default_factory=list)

    def waveform_key(self) -> str:
        """A short hash of the waveform settings: augmented renderings are cached under it, and the
        seed of each augmented copy derives from it (:func:`ensemble.inputs.features.load_waveform`).

        The first 12 hex digits of the SHA-1 of the JSON (sorted keys) of the old flat keys when
        ``waveform`` is a list they describe (:func:`ensemble.core.waveform_augment.to_flat`: the five
        transforms of the default, in its order, with its fixed settings), as the key was before the
        list form, so the caches and the augmented copies of existing recipes stay the same;
        otherwise of the ``waveform`` list itself.
        """
        flat = waveform_augment.to_flat(self.waveform)
        blob = json.dumps(self.waveform if flat is None else flat, sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:12]


@dataclass
class TrainConfig:
    """Fine-tuning of one (backbone, fold).

    Attributes:
        epochs, batch_size: schedule length and mini-batch size.
        lr, weight_decay: AdamW (timm ``create_optimizer_v2``) learning rate and decoupled decay.
        warmup_epochs, min_lr: linear warm-up then cosine decay (timm ``create_scheduler_v2``),
            stepped per update.
        label_smoothing: cross-entropy label smoothing (Szegedy et al. 2016), 0 disables.
        class_weights: ``none``, ``balanced`` (n / (classes * count), scikit-learn's convention),
            or ``given`` (the list ``class_weight_values`` in class order) for the loss.
        drop_rate, drop_path_rate: dropout before the classifier and stochastic depth (timm kwargs).
        ema_decay: keep an exponential moving average of the weights (timm ``ModelEmaV3``) and
            validate / save it; 0 disables.
        patience: stop when the fold metric has not improved for this many epochs; 0 disables.
        metric: fold metric used to pick the best epoch: ``accuracy``, ``macro_f1`` or ``uar``;
            for a multilabel task ``lwlrap``, ``map``, ``micro_f1`` or ``macro_f1``.
        select: ``best`` keeps the epoch with the best fold metric, ``last`` the final one.
        pretrained: start from ImageNet weights (local folder or hub, ``[paths].weights_dir``); False trains from scratch.
        precision: on CUDA, ``bf16`` (default) or ``fp16`` autocast (fp16 with a gradient
            scaler, ``torch.amp.GradScaler``), or ``fp32``.
        cpu_precision: on CPU, ``fp32`` (default) or ``bf16`` autocast. bf16 pays on CPUs with
            AVX512-BF16 or AMX, and not for every backbone: ``benchmarks/train_step.py`` measures each
            against fp32 on this project's CPU (docs/benchmarks.md).
            Without those instructions bf16 is emulated and slow.
        seed: seeds Python, NumPy and torch; the same seed gives the same run on CPU. A
            ``backbones`` entry ``"name@S"`` trains with seed ``S`` instead.
        tta_shifts: time-shift test-time augmentation, each a fraction of the frame axis in
            (-1, 1), non-zero: every prediction of a run (validation, ``oof.csv``, ``test.csv``)
            and of ``ens predict`` is the mean of the probabilities of the image and of the image
            rolled circularly along time by ``round(shift * frames)`` frames for each shift
            (:func:`ensemble.members.loop.predict`); empty (the default) predicts the image alone.
        layer_decay: discriminative learning rates (Howard & Ruder 2018, ULMFiT; BEiT's layer-wise
            decay): timm ``create_optimizer_v2(..., layer_decay=...)`` scales the learning rate of
            the layer group ``k`` groups below the head by ``layer_decay ** k`` (groups from the
            model's ``group_matcher``: stem, each block, head), so pretrained early layers move
            least; in (0, 1], 0 (the default) is off: one learning rate for every parameter.
    """

    epochs: int = 15
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_epochs: float = 1.0
    min_lr: float = 1e-6
    label_smoothing: float = 0.1
    class_weights: str = "none"
    class_weight_values: list[float] = field(default_factory=list)
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    ema_decay: float = 0.0
    patience: int = 0
    metric: str = "uar"
    select: str = "best"
    pretrained: bool = True
    precision: str = "bf16"
    cpu_precision: str = "fp32"
    seed: int = 42
    tta_shifts: list[float] = field(default_factory=list)
    layer_decay: float = 0.0


@dataclass
class BlendConfig:
    """Blending of OOF predictions (see :mod:`ensemble.blending.blenders`). ``method``: one of
    :data:`~ensemble.blending.blenders.METHODS`, or ``auto``: the one with the best cross-validated ``[train].metric``
    (:func:`ensemble.blending.blend.best_method`). Caruana selection: ``iterations`` rounds in each of
    ``bags`` bags of a random ``bag_fraction`` of the members (``bags = 0``: one unbagged run).
    Stacking: inverse L2 strength ``stacking_c`` of the logistic regression. ``seed``: the bags' draw.
    ``members``: what to blend; empty (the default) means every model of ``backbones``; an item is
    a model name of ``backbones`` or ``"<recipe>:<model>"``, the runs of a model of another recipe
    in the same ``runs_dir`` (other features or clip length, same competition and folds; see
    :func:`ensemble.store.runs.members`)."""

    members: list[str] = field(default_factory=list)
    method: str = "caruana"
    iterations: int = 50
    bags: int = 20
    bag_fraction: float = 0.5
    stacking_c: float = 1.0
    seed: int = 0


@dataclass
class FunctionalsMember:
    """One functionals member (a ``[[functionals]]`` table of the recipe; :mod:`ensemble.members.tabular`):
    acoustic functionals of each clip (:mod:`ensemble.members.functionals`), standardised per speaker
    (``[speakers].norm = "speaker"``) or over the training folds, and a scikit-learn model trained
    per fold on the same folds as the backbones; its run tables go to ``<runs_dir>/<recipe>/<name>/``.

    Attributes:
        name: the member's name: its run folders and its row in the leaderboard.
        set: ``ComParE_2016`` (6373 functionals) or ``eGeMAPSv02`` (88), from openSMILE (the
            ``opensmile`` extra, a research licence), ``ens_basic`` (librosa descriptors, permissive),
            ``yamnet_embedding`` / ``mn04_embedding`` (frozen AudioSet CNNs), or a transformers speech
            encoder (:mod:`ensemble.members.encoders`): a folder of ``[paths].weights_dir`` such as ``whisper_base``,
            a path, or a hub id, ``:pad30`` appended for Whisper's 30 s window.
        model: ``logreg`` (multinomial logistic regression, balanced class weights), ``svm``
            (RBF support vector machine with Platt-scaled probabilities, balanced class weights) or
            ``lightgbm`` (gradient-boosted trees, LightGBM, balanced class weights).
        c: inverse regularisation strength of ``logreg`` and ``svm`` (scikit-learn's ``C``).
        trees, learning_rate, leaves: ``lightgbm``'s number of boosting rounds, shrinkage and
            leaves per tree (``n_estimators``, ``learning_rate``, ``num_leaves``).
        tune: choose ``c`` (``logreg``, ``svm``) or ``trees`` and ``leaves`` (``lightgbm``) in each
            fold by an inner speaker-grouped cross-validation on that fold's training clips only
            (:func:`ensemble.members.tabular.tune`, grids :data:`ensemble.members.tabular.GRIDS`); the values
            above are then ignored, and each fold's choice is in its ``metrics.json``.
        layers: an encoder set's hidden states the model sees (:func:`ensemble.core.encoder_sets.layer_indices`):
            ``all``, one index (0: the embeddings), a range ``2-4`` or a list ``1,3-5``.
    """

    name: str = "functionals"
    set: str = "eGeMAPSv02"
    model: str = "logreg"
    c: float = 0.1
    trees: int = 300
    learning_rate: float = 0.05
    leaves: int = 15
    tune: bool = False
    layers: str = "all"


@dataclass
class FinetuneConfig:
    """How the fine-tune kind (:mod:`ensemble.members.finetune`) fine-tunes a transformers audio encoder
    named in ``backbones`` (``[finetune]``; one section for every fine-tuned entry; its optimiser and
    schedule are ``[train]`` and ``[by_backbone.<name>.train]`` like any backbone's). Not part of the
    image or functionals members' run identity: a fine-tuned run records it beside its recipe.

    Attributes:
        train_layers: the encoder's top transformer layers that are trained (with the hidden-state
            weights, the pooling and the head, always trained); the layers below stay frozen; 0
            trains every layer.
        freeze_feature_encoder: keep the encoder's stem frozen (Whisper's two convolutions; a
            wav2vec2-family encoder's convolutional feature encoder), as transformers' audio
            classification recipes do; a stem below frozen layers is frozen anyway.
        pooling: ``attention`` (a learned score per frame, softmax over the clip's frames) or ``mean``
            over the clip's frames; padding frames are masked out either way.
        accumulate: micro-batches of ``[train].batch_size`` whose gradients are summed before each
            optimiser step (gradient accumulation): the effective batch is ``batch_size * accumulate``.
        seconds: the clip length the encoder sees (silence-trimmed clips centre-cropped to it, shorter
            ones padded at the end and masked); 0 takes ``[features].duration``.
    """

    train_layers: int = 0
    freeze_feature_encoder: bool = True
    pooling: str = "attention"
    accumulate: int = 1
    seconds: float = 0.0


@dataclass
class SpeakersConfig:
    """Speaker-aware normalisation (``[speakers]``; see :mod:`ensemble.speaker.speaker_groups`).

    Attributes:
        norm: ``clip`` (each image as rendered: every channel scaled to its own clip's peak) or
            ``speaker``: each channel and frequency row standardised by the mean and standard
            deviation over all frames of all clips of the clip's speaker (speaker-level CMVN;
            Busso et al. 2011, the ComParE baselines' per-speaker z-normalisation), no label used.
        test: where the test clips' speakers come from: ``given`` (the test table's ``group_col``),
            ``inferred`` (a pretrained speaker encoder's embeddings clustered, :func:`ensemble.speaker.speakers.infer`),
            ``pool`` (the whole test set as one speaker), or ``auto``: ``given`` when the test table
            has the group column, else ``inferred``.
        k: the number of inferred test speakers; 0 chooses it by the best silhouette in ``k_min..k_max``.
        train: where the training clips' speakers (which group the folds and, with ``norm =
            "speaker"``, are normalised over) come from: ``given`` (``train.csv``'s ``group_col``),
            ``inferred`` (the same encoder and clustering as ``inferred`` test speakers, k chosen
            by silhouette in :func:`ensemble.speaker.speaker_groups.train_k_range`, written once to
            ``train_speakers.csv``), ``none`` (no speakers: ungrouped folds, with a
            ``LeakageWarning``; ``norm = "speaker"`` is then refused), or ``auto``: ``given``
            when ``train.csv`` has the group column, else ``inferred``.
        require_speech: with ``norm = "speaker"``, ``ens train`` first asks whether the clips are
            speech (:mod:`ensemble.members.speech`: an AudioSet tagger on a sample of training clips) and
            switches speaker normalisation off, with a warning, when they are not
            (:mod:`ensemble.members.guards`); false normalises per group whatever the clips are. Groups too
            small for statistics switch it off either way (:data:`ensemble.members.guards.MIN_CLIPS_PER_SPEAKER`).
    """

    norm: str = "clip"
    test: str = "auto"
    k: int = 0
    k_min: int = 2
    k_max: int = 8
    train: str = "auto"
    require_speech: bool = True


@dataclass
class PseudoConfig:
    """Pseudo-labelling of the unlabelled test clips (``[pseudo]``; :mod:`ensemble.members.pseudo`): after
    the members train, each round retrains them as new members (``"<entry>+pl<round>"``) with the
    test clips the previous round is confident about added to every fold's training set as soft
    targets (the "noisy student" of the BirdCLEF 2024-2025 winners; Xie et al. 2020). Fold ``k``'s
    labels come from the previous round's fold-``k`` models only, so no label of fold ``k``'s
    validation clips reaches them and OOF stays honest.

    Attributes:
        rounds: rounds of retraining; 0 is off (``ens train --pseudo-label`` makes it at least 1).
        threshold: keep test clips whose highest pseudo probability is at least this; 0 chooses it
            per fold: the lowest confidence at which the teacher's OOF clips of the other folds,
            kept at that confidence, are right at least ``precision`` of the time.
        precision: the OOF accuracy of kept clips that the automatic threshold aims for.
        members: the member names (timm model names of ``backbones``, ``[[functionals]]`` names)
            retrained each round; empty: every member.
    """

    rounds: int = 0
    threshold: float = 0.0
    precision: float = 0.9
    members: list[str] = field(default_factory=list)


@dataclass
class RuntimeConfig:
    """How this machine runs the recipe (``[runtime]``). No setting here is part of a run's identity:
    a run finished on one device is reused on another.

    Attributes:
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``: training, feature rendering
            and ``ens predict``'s default.
        compile: wrap the training forward pass in ``torch.compile`` (the first epoch pays the
            compilation; pays off on long GPU runs).
        workers: audio-decoding processes while the feature cache is filled; 0 chooses
            (:meth:`ensemble.inputs.features.FeatureCache.get`).
        threads: CPU threads: torch's intra-op threads in training and ``ens predict``, ONNX
            Runtime's intra-op threads and OpenVINO's ``INFERENCE_NUM_THREADS`` in ``ens predict
            --runtime``; 0 leaves each runtime's default (every core; in a Ray task, its ``run_cpus``).
        run_cpus, run_gpus: what one (member, fold) run asks of a Ray cluster under
            ``ens train --executor ray`` (``num_cpus`` / ``num_gpus`` of its task).
    """

    device: str = "auto"
    compile: bool = False
    workers: int = 0
    threads: int = 0
    run_cpus: float = 1.0
    run_gpus: float = 0.0


@dataclass
class PathsConfig:
    """Where a recipe's inputs and outputs live on this machine (``[paths]``); relative paths are
    relative to the working directory ens runs in. Not part of a run's identity.

    Attributes:
        runs_dir: the run store's root: ``<runs_dir>/<recipe name>/`` (:mod:`ensemble.store.runs`).
        submissions_dir: where ``ens blend`` writes ``<recipe>-<method>.csv``.
        weights_dir: folder of timm ``local-dir:`` weights, one sub-folder per backbone;
            ``""`` means ``$ENS_WEIGHTS_DIR`` or ``../shared/weights`` when either exists.
    """

    runs_dir: str = "runs"
    submissions_dir: str = "submissions"
    weights_dir: str = ""


@dataclass
class Recipe:
    """A whole run: the named sections above plus the backbones to train and the output folders.

    ``by_backbone`` holds per-backbone settings (``[by_backbone.<timm model name>.train]`` and
    ``[by_backbone.<timm model name>.augment]`` tables), each a dict of the keys it changes in that
    section for that model's entries only (every seed and pseudo round of it), applied by
    :meth:`for_backbone`: a recipe can train an AudioSet CNN for 8 epochs with layer-wise
    learning-rate decay beside ImageNet backbones trained for 15 without it. A run's identity
    holds the settings it trained with, not this table, so changing one model's table leaves
    the other models' finished runs valid.
    """

    name: str = "recipe"
    backbones: list[str] = field(default_factory=lambda: ["efficientnet_b0"])
    competition: CompetitionConfig = field(default_factory=CompetitionConfig)
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    blend: BlendConfig = field(default_factory=BlendConfig)
    speakers: SpeakersConfig = field(default_factory=SpeakersConfig)
    functionals: list[FunctionalsMember] = field(default_factory=list)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    by_backbone: dict[str, dict[str, dict]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain-dict form (for ``config.json`` of a run)."""
        return dataclasses.asdict(self)

    def for_backbone(self, backbone: str) -> Recipe:
        """The recipe a ``backbones`` entry trains with: this one with the model's ``by_backbone``
        settings applied (and ``by_backbone`` emptied), with ``[train].seed = S`` for
        ``"name@S"``, and for a model pretrained on its own frontend (:data:`ensemble.core.frontends.MODELS`,
        e.g. ``yamnet``) ``[features]`` set from that frontend (:func:`ensemble.core.frontends.feature_settings`)
        with this recipe's ``duration`` and ``trim_db``. Applying it twice changes nothing more.

        Raises:
            RecipeError: a malformed entry (see :meth:`ensemble.core.entry.Entry.parse`).
        """
        entry = Entry.parse(backbone)
        name, seed = entry.model, entry.seed
        own = self.by_backbone.get(name, {})
        recipe = dataclasses.replace(
            self,
            train=dataclasses.replace(self.train, **own.get("train", {})),
            augment=dataclasses.replace(self.augment, **own.get("augment", {})),
            by_backbone={},
        )
        if seed is not None:
            recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, seed=seed))
        frontend = frontends.for_model(name)
        if frontend is None:
            return recipe
        f = self.features
        return dataclasses.replace(recipe, features=FeatureConfig(**frontends.feature_settings(frontend), duration=f.duration, trim_db=f.trim_db))

    def seeds(self, entries: list[str]) -> list[int]:
        """The ``[train].seed`` each ``backbones`` entry trains with (:meth:`for_backbone`), in order:
        ``["regnetx_002", "regnetx_002@43"]`` gives ``[train.seed, 43]``.

        Raises:
            RecipeError: a malformed entry (see :meth:`ensemble.core.entry.Entry.parse`).
        """
        return [self.for_backbone(entry).train.seed for entry in entries]

    def members(self) -> dict[str, list[str]]:
        """Blend members: each timm model name of ``backbones`` -> its entries (one per seed), in
        the order the entries first appear (``["a", "b", "a@7"]`` gives ``{"a": ["a", "a@7"], "b": ["b"]}``),
        then each functionals member -> ``[its name]``, then each ``[pseudo]`` round's retrained
        members (``"a+pl1" -> ["a+pl1", "a@7+pl1"]``).

        Raises:
            RecipeError: a malformed entry (see :meth:`ensemble.core.entry.Entry.parse`).
        """
        groups: dict[str, list[str]] = {}
        for entry in self.entries():
            groups.setdefault(Entry.parse(entry).member, []).append(entry)
        return groups

    def entries(self) -> list[str]:
        """Every run folder name of the recipe: its ``backbones`` entries, then its functionals
        members' names, then for each ``[pseudo]`` round ``1..rounds`` the retrained entries
        (``"<entry>+pl<round>"``, :class:`ensemble.core.entry.Entry`) of ``[pseudo].members`` (every member when empty)."""
        base = [*self.backbones, *(m.name for m in self.functionals)]
        chosen = [Entry.parse(e) for e in base if not self.pseudo.members or Entry.parse(e).member in self.pseudo.members]
        return base + [str(e.in_round(r)) for r in range(1, self.pseudo.rounds + 1) for e in chosen]

    def backbone_entries(self, names: list[str]) -> list[str]:
        """The ``backbones`` a command line's ``names`` select: each name that is no ``[[functionals]]``
        member, without its pseudo round (``"a@7+pl1"`` -> ``"a@7"``: the round trains its own entry), once each.

        Raises:
            RecipeError: a malformed entry (see :meth:`ensemble.core.entry.Entry.parse`).
        """
        return list(dict.fromkeys(str(Entry.parse(name).base) for name in names if self.functionals_member(name) is None))

    def functionals_member(self, name: str) -> FunctionalsMember | None:
        """The ``[[functionals]]`` member called ``name`` (a pseudo round's ``"<name>+pl<round>"``: that
        member under this name), or None for a backbone entry."""
        entry = Entry.parse(name)
        member = next((m for m in self.functionals if m.name == str(entry.base)), None)
        return member if member is None or not entry.round else dataclasses.replace(member, name=name)


_SECTIONS = {
    "competition": CompetitionConfig,
    "folds": FoldsConfig,
    "features": FeatureConfig,
    "train": TrainConfig,
    "augment": AugmentConfig,
    "blend": BlendConfig,
    "speakers": SpeakersConfig,
    "pseudo": PseudoConfig,
    "finetune": FinetuneConfig,
    "runtime": RuntimeConfig,
    "paths": PathsConfig,
}
_MOVED = {
    ("", "runs_dir"): "paths",
    ("", "submissions_dir"): "paths",
    ("train", "weights_dir"): "paths",
    ("train", "device"): "runtime",
    ("train", "compile"): "runtime",
}
"""Keys that lived elsewhere before the ``[runtime]`` and ``[paths]`` sections: (old section, key) -> new section."""


def _moved_keys(data: dict, source: str) -> dict:
    """``data`` with each key of :data:`_MOVED` in its old place moved to its section, so older
    recipes and the stored recipes of finished runs still load.

    Raises:
        RecipeError: a key given both in its old place and in its section.
    """
    data = {key: dict(value) if isinstance(value, dict) else value for key, value in data.items()}
    for (old, key), new in _MOVED.items():
        holder = data if not old else data.get(old)
        if not isinstance(holder, dict) or key not in holder:
            continue
        target = data.setdefault(new, {})
        if isinstance(target, dict) and key in target:
            where = "the top level" if not old else f"[{old}]"
            raise RecipeError(f"{source}: {key} is given in {where} and in [{new}]; keep only [{new}].{key}.")
        if isinstance(target, dict):
            target[key] = holder.pop(key)
    return data


def _check(cls, values: dict, where: str, source: str) -> dict:
    """Refuse unknown keys and wrong types in ``values`` (keys of dataclass ``cls``); ints become floats where a float is due."""
    known = {f.name for f in dataclasses.fields(cls) if cls is not Recipe or f.name not in _SECTIONS}  # a section may have a key named like one
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise RecipeError(f"{source}: unknown key(s) {unknown} in {where}; known keys are {sorted(known)}. Fix the spelling or remove them.")
    defaults = cls()
    for key, value in values.items():
        expected = type(getattr(defaults, key))
        # a bool is an int in Python: true/false is refused for a number key (and a number for a bool key)
        ok = (isinstance(value, expected) and (expected is bool or not isinstance(value, bool))) or (
            expected is float and isinstance(value, int) and not isinstance(value, bool)
        )
        if not ok:
            raise RecipeError(f"{source}: {where}.{key} = {value!r} should be of type {expected.__name__}.")
    return {k: (float(v) if isinstance(getattr(defaults, k), float) else v) for k, v in values.items()}


def _flat_waveform_keys(section: dict, source: str) -> dict:
    """An ``[augment]`` section with the old flat waveform keys (those of
    :data:`ensemble.core.waveform_augment.FLAT_DEFAULTS`, before ``waveform`` was a list) replaced by the
    ``waveform`` list they describe (:func:`ensemble.core.waveform_augment.from_flat`, missing keys at
    their old defaults), so old recipes and the stored recipes of finished runs still load; a
    section without them is returned as it is.

    Raises:
        RecipeError: a flat key is not a number, or the section gives both flat keys and ``waveform``.
    """
    flat = {key: value for key, value in section.items() if key in waveform_augment.FLAT_DEFAULTS}
    if not flat:
        return section
    if "waveform" in section:
        raise RecipeError(
            f"{source}: [augment] gives both waveform and the old flat waveform key(s) {sorted(flat)}; "
            f"write every transform in waveform (such as {waveform_augment.DEFAULT[-1]}) and remove the flat keys."
        )
    for key, value in flat.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{source}: [augment].{key} = {value!r} should be of type float.")
    rest = {key: value for key, value in section.items() if key not in flat}
    return {**rest, "waveform": waveform_augment.from_flat({key: float(value) for key, value in flat.items()})}


def from_dict(data: dict, source: str = "<recipe>") -> Recipe:
    """Build a :class:`Recipe` from a TOML-like dict.

    An ``[augment]`` section in the form before ``waveform`` was a list (the flat keys ``noise_p``
    ... ``pitch_semitones``) is read as the list those keys describe (:func:`_flat_waveform_keys`),
    and the machine settings in their places before ``[runtime]`` and ``[paths]`` existed (top-level
    ``runs_dir`` / ``submissions_dir``, ``[train].device`` / ``compile`` / ``weights_dir``) are
    moved there (:func:`_moved_keys`).

    Raises:
        RecipeError: on an unknown section or key, or a value of the wrong type.
    """
    data = _moved_keys(data, source)
    if isinstance(data.get("augment"), dict):
        data["augment"] = _flat_waveform_keys(data["augment"], source)
    sections = {name: cls(**_check(cls, data.pop(name, {}), f"[{name}]", source)) for name, cls in _SECTIONS.items()}
    tables = data.pop("functionals", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise RecipeError(f"{source}: functionals must be [[functionals]] tables (name, set, model, c), not {tables!r}.")
    functionals = [FunctionalsMember(**_check(FunctionalsMember, t, f"[[functionals]] {k + 1}", source)) for k, t in enumerate(tables)]
    by_backbone = _by_backbone(data.pop("by_backbone", {}), source)
    recipe = Recipe(**_check(Recipe, data, "the top level", source), **sections, functionals=functionals, by_backbone=by_backbone)
    validate(recipe, source)
    return recipe


BY_BACKBONE_SECTIONS = {"train": TrainConfig, "augment": AugmentConfig}
"""The sections a ``[by_backbone.<model>]`` table may change (``[features]`` comes from the model's frontend, if any)."""


def _by_backbone(tables, source: str) -> dict[str, dict[str, dict]]:
    """The ``by_backbone`` tables checked: model name -> section (:data:`BY_BACKBONE_SECTIONS`) ->
    its keys, with values type-checked as in the section itself (ints made floats where due).

    Raises:
        RecipeError: a table that is not a table of sections, an unknown section, key or a wrong type.
    """
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        raise RecipeError(f"{source}: by_backbone must hold [by_backbone.<timm model name>.train] / .augment tables, not {tables!r}.")
    out = {}
    for model, sections in tables.items():
        unknown = sorted(set(sections) - set(BY_BACKBONE_SECTIONS))
        if unknown or not all(isinstance(v, dict) for v in sections.values()):
            raise RecipeError(
                f"{source}: [by_backbone.{model}] may hold only the tables {sorted(BY_BACKBONE_SECTIONS)} "
                f"(such as [by_backbone.{model}.train] with epochs = 8), not {unknown or sections}."
            )
        out[model] = {name: _check(BY_BACKBONE_SECTIONS[name], keys, f"[by_backbone.{model}.{name}]", source) for name, keys in sections.items()}
    return out


def _read_toml(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """A recipe file's dict with its ``extends = "other.toml"`` base merged under it (section by section)."""
    if not path.is_file():
        raise RecipeError(f"recipe file {path} does not exist; give the path of a recipe TOML file such as recipes/ravdess.toml.")
    if path.resolve() in chain:
        raise RecipeError(f"{path}: 'extends' forms a cycle through {[str(p) for p in chain]}.")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(f"{path}: not valid TOML: {err}") from err
    data = _moved_keys(data, str(path))  # each file in today's form before files are merged
    if isinstance(data.get("augment"), dict):
        data["augment"] = _flat_waveform_keys(data["augment"], str(path))
    base_name = data.pop("extends", None)
    if base_name is None:
        return data
    base = _read_toml(path.parent / base_name, chain + (path.resolve(),))
    base.pop("name", None)
    return _merged(base, data)


def _merged(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` applied: a table (a dict, such as a section or a ``[by_backbone.X.train]``)
    key by key at every depth, any other key replaced."""
    out = dict(base)
    for key, value in changes.items():
        old = out.get(key)
        out[key] = _merged(old, value) if isinstance(value, dict) and isinstance(old, dict) else value
    return out


def _everywhere(data: dict, overrides: dict) -> dict:
    """``overrides`` extended so that each ``[train]`` / ``[augment]`` key it sets also replaces that
    key in every ``[by_backbone.*]`` table of ``data`` that sets it: an override (``ens train
    --epochs 1``) is the last word for every backbone."""
    extra = {}
    for model, sections in (data.get("by_backbone") or {}).items():
        if not isinstance(sections, dict):
            continue  # refused with its message by from_dict
        for name, keys in sections.items():
            given = overrides.get(name)
            if isinstance(keys, dict) and isinstance(given, dict) and (common := set(keys) & set(given)):
                extra.setdefault(model, {})[name] = {key: given[key] for key in common}
    return _merged(overrides, {"by_backbone": extra}) if extra else overrides


def load(path: str | Path, overrides: dict | None = None) -> Recipe:
    """Read a recipe TOML file. The recipe's ``name`` defaults to the file's stem.

    A recipe may start with ``extends = "base.toml"`` (a path relative to it): the base's settings
    apply, and each section of this file overrides the base's keys it names. ``overrides`` is
    applied last, in the same way (``{"train": {"epochs": 1}, "backbones": ["regnetx_002"]}``),
    and checked like the file (what ``ens train --epochs 1 --backbone regnetx_002`` does); a
    ``[train]`` or ``[augment]`` key it sets wins over the same key in ``[by_backbone.*]`` tables too.

    Every other path a recipe holds (``[competition].dir`` and ``audio_root``, and the folders of
    ``[paths]``) is relative to the working directory ens runs
    in (the project's root, where the README's commands run), not to the recipe file.

    Raises:
        RecipeError: the file (or a base) does not exist, is not valid TOML, or has (or ``overrides``
            give) a bad key or value.
    """
    path = Path(path)
    data = _read_toml(path)
    data.setdefault("name", path.stem)
    models = {Entry.parse(entry).model for entry in data.get("backbones", Recipe().backbones) if isinstance(entry, str)}
    stray = sorted(set(data.get("by_backbone") or {}) - models) if isinstance(data.get("by_backbone"), dict) else []
    if stray:  # checked in the file, before a command line narrows backbones (ens train --backbone X)
        raise RecipeError(f"{path}: [by_backbone] tables {stray} name no model of backbones {sorted(models)}; fix the name or remove the table.")
    return from_dict(_merged(data, _everywhere(data, overrides or {})), str(path) if not overrides else f"{path} with overrides {overrides}")


def _encoder_problems(recipe: Recipe) -> str:
    """What is wrong with the recipe's encoder sets, for the check's message ("none" when nothing)."""
    problems = [why for m in recipe.functionals if m.set not in FUNCTIONAL_SETS and (why := encoder_sets.check(m.set, recipe.paths.weights_dir))]
    return " ".join(problems) or "none found"


CPU_PRECISIONS = ("fp32", "bf16")  # [train].cpu_precision
SPEAKER_NORMS = ("clip", "speaker")  # [speakers].norm
POOLINGS = ("attention", "mean")  # [finetune].pooling (ensemble.members.finetune)
FUNCTIONAL_SETS = ("ComParE_2016", "eGeMAPSv02", "ens_basic", "yamnet_embedding", "mn04_embedding")  # [[functionals]].set (ensemble.members.functionals)
FUNCTIONAL_MODELS = ("logreg", "svm", "lightgbm")  # [[functionals]].model (ensemble.members.tabular)
TEST_SPEAKERS = ("auto", "given", "inferred", "pool")  # [speakers].test
TRAIN_SPEAKERS = ("auto", "given", "inferred", "none")  # [speakers].train


def _frontend_problem(recipe: Recipe) -> str | None:
    """What is inconsistent between ``[features]``, the backbones' frontends and ``[augment]``, or None.

    ``[features].frontend`` must be known, and with a pretrained frontend every key it fixes must
    hold the frontend's value; SpecAugment's ``freq_mask`` must fit in each frontend backbone's mel bands."""
    f = recipe.features
    if f.frontend not in frontends.NAMES:
        return f"[features].frontend = {f.frontend!r}: must be one of {frontends.NAMES}"
    if f.frontend != frontends.IMAGE:
        wanted = frontends.feature_settings(f.frontend)
        wrong = {key: value for key, value in wanted.items() if getattr(f, key) != value}
        wrong.update({key: getattr(FeatureConfig(), key) for key in ("n_mfcc", "top_db") if getattr(f, key) != getattr(FeatureConfig(), key)})
        if wrong:
            given = ", ".join(f"{key} = {getattr(f, key)!r}" for key in wrong)
            return (
                f"[features].frontend = {f.frontend!r} fixes its own spectrogram, but [features] gives {given}; "
                f"remove those keys or set them to the frontend's values {wrong} (or set frontend = 'image')"
            )
    for entry in recipe.backbones:
        name = Entry.parse(entry).model
        frontend = frontends.for_model(name)
        if frontend is not None and recipe.augment.freq_mask > frontends.get(frontend).n_mels:
            bands = frontends.get(frontend).n_mels
            return (
                f"[augment].freq_mask = {recipe.augment.freq_mask} is wider than the {bands} mel bands of backbone {name!r} "
                f"({frontend} frontend); use at most {bands}"
            )
    return None


def validate(recipe: Recipe, source: str = "<recipe>") -> None:
    """Check values that types alone do not catch.

    Raises:
        RecipeError: naming the key, the bad value and what is allowed.
    """
    f, t, a = recipe.features, recipe.train, recipe.augment
    try:
        task = tasks.get(recipe.competition.task)
    except tasks.TaskError as err:
        raise RecipeError(f"{source}: {err}") from err
    try:
        members = recipe.members()
    except RecipeError as err:
        raise RecipeError(f"{source}: {err}") from err
    repeated = [entries for entries in members.values() if len(set(recipe.seeds(entries))) < len(entries)]
    functional_names = [m.name for m in recipe.functionals]
    base_members = [Entry.parse(e).model for e in recipe.backbones] + functional_names
    pl = recipe.pseudo
    retrained_images = [e for e in recipe.backbones if not pl.members or Entry.parse(e).model in pl.members]
    waveform_problem = waveform_augment.problem(a.waveform)
    frontend_problem = _frontend_problem(recipe)
    ft = recipe.finetune
    checks = [
        (frontend_problem is None, frontend_problem),
        (
            ft.train_layers >= 0 and ft.accumulate >= 1 and ft.seconds >= 0 and ft.pooling in POOLINGS,
            f"[finetune] needs train_layers >= 0 (0: every layer), accumulate >= 1, seconds >= 0 (0: [features].duration) and pooling "
            f"in {POOLINGS}, not train_layers = {ft.train_layers}, accumulate = {ft.accumulate}, seconds = {ft.seconds}, pooling = {ft.pooling!r}",
        ),
        (0 <= t.layer_decay <= 1, f"[train].layer_decay = {t.layer_decay}: must be in (0, 1], or 0 for one learning rate"),
        (bool(f.channels) and all(c in CHANNELS for c in f.channels), f"[features].channels = {f.channels}: each must be one of {CHANNELS}"),
        (f.sample_rate > 0 and f.duration > 0, "[features].sample_rate and duration must be positive"),
        (f.hop_length > 0 and f.n_fft >= f.hop_length, "[features].n_fft must be >= hop_length > 0"),
        (f.height >= 8, "[features].height must be at least 8 rows"),
        (t.metric in task.metric_names, f"[train].metric = {t.metric!r}: must be one of {task.metric_names} for a {task.name} task"),
        (t.select in ("best", "last"), f"[train].select = {t.select!r}: must be 'best' or 'last'"),
        (recipe.runtime.device in ("auto", "cpu", "cuda"), f"[runtime].device = {recipe.runtime.device!r}: must be auto, cpu or cuda"),
        (recipe.speakers.norm in SPEAKER_NORMS, f"[speakers].norm = {recipe.speakers.norm!r}: must be one of {SPEAKER_NORMS}"),
        (recipe.speakers.test in TEST_SPEAKERS, f"[speakers].test = {recipe.speakers.test!r}: must be one of {TEST_SPEAKERS}"),
        (recipe.speakers.train in TRAIN_SPEAKERS, f"[speakers].train = {recipe.speakers.train!r}: must be one of {TRAIN_SPEAKERS}"),
        (
            recipe.speakers.k >= 0 and 2 <= recipe.speakers.k_min <= recipe.speakers.k_max,
            f"[speakers] needs k >= 0 (0: chosen by silhouette) and 2 <= k_min <= k_max, not k = {recipe.speakers.k}, "
            f"k_min = {recipe.speakers.k_min}, k_max = {recipe.speakers.k_max}",
        ),
        (recipe.runtime.workers >= 0, f"[runtime].workers = {recipe.runtime.workers}: must be >= 0 (0 chooses)"),
        (recipe.runtime.threads >= 0, f"[runtime].threads = {recipe.runtime.threads}: must be >= 0 (0: every core)"),
        (
            recipe.runtime.run_cpus > 0 and recipe.runtime.run_gpus >= 0,
            f"[runtime] run_cpus = {recipe.runtime.run_cpus} must be > 0 and run_gpus = {recipe.runtime.run_gpus} >= 0",
        ),
        (t.precision in ("bf16", "fp16", "fp32"), f"[train].precision = {t.precision!r}: must be bf16, fp16 or fp32"),
        (t.cpu_precision in CPU_PRECISIONS, f"[train].cpu_precision = {t.cpu_precision!r}: must be bf16 or fp32 (fp16 is CUDA only)"),
        (t.epochs >= 1 and t.batch_size >= 1, "[train].epochs and batch_size must be >= 1"),
        (0 <= t.label_smoothing < 1, "[train].label_smoothing must be in [0, 1)"),
        (recipe.folds.n_splits >= 2, "[folds].n_splits must be >= 2"),
        (t.class_weights in ("none", "balanced", "given"), f"[train].class_weights = {t.class_weights!r}: must be none, balanced or given"),
        (t.class_weights != "given" or len(t.class_weight_values) > 0, "[train].class_weights = 'given' needs class_weight_values = [...] in class order"),
        (
            t.class_weights != "given" or not recipe.competition.classes or len(t.class_weight_values) == len(recipe.competition.classes),
            f"[train].class_weight_values has {len(t.class_weight_values)} values for the {len(recipe.competition.classes)} "
            f"[competition].classes; give one per class, in class order",
        ),
        (0 <= t.ema_decay < 1 and t.patience >= 0, "[train].ema_decay must be in [0, 1) and patience >= 0"),
        (a.copies >= 0 and a.freq_mask >= 0 and a.time_mask >= 0 and a.n_masks >= 0, "[augment] copies, freq_mask, time_mask and n_masks must be >= 0"),
        (waveform_problem is None, waveform_problem),
        (0 <= a.time_roll < 1, "[augment].time_roll is a fraction in [0, 1)"),
        (a.mixup_alpha >= 0, "[augment].mixup_alpha must be >= 0"),
        (
            a.mixup_alpha == 0 or t.batch_size % 2 == 0,
            f"[augment].mixup_alpha > 0 mixes each image with its partner in the flipped batch, so [train].batch_size = {t.batch_size} must be even",
        ),
        (
            recipe.blend.method in (*task.blend_methods, "auto"),
            f"[blend].method = {recipe.blend.method!r}: must be one of {task.blend_methods} for a {task.name} task, or 'auto' (the best cross-validated)",
        ),
        (task.takes_class_weights or t.class_weights == "none", f"[train].class_weights does not work for a {task.name} task; set it to 'none'"),
        (
            recipe.blend.iterations >= 0 and recipe.blend.bags >= 0 and 0 < recipe.blend.bag_fraction <= 1 and recipe.blend.stacking_c > 0,
            "[blend] needs iterations >= 0, bags >= 0, 0 < bag_fraction <= 1 and stacking_c > 0",
        ),
        (bool(recipe.backbones) or bool(recipe.functionals), "backbones must name at least one timm model, or [[functionals]] one member"),
        (
            len(set(functional_names)) == len(functional_names) and not set(functional_names) & {Entry.parse(e).model for e in recipe.backbones},
            f"[[functionals]] names {functional_names} must be unique and differ from the backbones' names",
        ),
        (task.name == "multiclass" or not recipe.functionals, "[[functionals]] members work for multiclass tasks only; remove them"),
        (
            all(
                (m.set in FUNCTIONAL_SETS or encoder_sets.check(m.set, recipe.paths.weights_dir) is None)
                and m.model in FUNCTIONAL_MODELS
                and m.c > 0
                and m.trees >= 1
                and m.learning_rate > 0
                and m.leaves >= 2
                and m.name.strip()
                for m in recipe.functionals
            ),
            f"each [[functionals]] member needs a name, set in {FUNCTIONAL_SETS} or a transformers encoder (a folder of [paths].weights_dir "
            f"holding config.json, a path, or a hub id 'org/name'; {_encoder_problems(recipe)}), model in {FUNCTIONAL_MODELS}, c > 0, "
            "trees >= 1, learning_rate > 0 and leaves >= 2",
        ),
        (
            all(encoder_sets.check_layers(m.layers) and (m.layers == "all" or m.set not in FUNCTIONAL_SETS) for m in recipe.functionals),
            "[[functionals]] layers picks an encoder set's hidden states: 'all', one index '3', a range '2-4' or a list '1,3-5'; "
            f"leave it out for the sets {FUNCTIONAL_SETS}",
        ),
        (
            not any(marks_round(name) for name in [*recipe.backbones, *functional_names]),
            f"backbones and [[functionals]] names may not contain {ROUND_MARK!r}: it marks a pseudo-labelling round's members",
        ),
        (
            pl.rounds >= 0 and 0 <= pl.threshold < 1 and 0 < pl.precision <= 1,
            f"[pseudo] needs rounds >= 0, 0 <= threshold < 1 (0: chosen for precision) and 0 < precision <= 1, not rounds = {pl.rounds}, "
            f"threshold = {pl.threshold}, precision = {pl.precision}",
        ),
        (
            set(pl.members) <= set(base_members),
            f"[pseudo].members = {pl.members}: each must be a member of this recipe, one of {sorted(set(base_members))}",
        ),
        (pl.rounds == 0 or task.name == "multiclass", f"[pseudo] works for multiclass tasks only; set [pseudo].rounds = 0 for a {task.name} task"),
        (
            pl.rounds == 0 or a.mixup_alpha == 0 or not retrained_images,
            "[pseudo] soft targets and [augment].mixup_alpha > 0 do not go together yet (timm's Mixup takes class indices); "
            "set mixup_alpha = 0, or name only [[functionals]] members in [pseudo].members",
        ),
        (
            not repeated,
            f"backbones {repeated[0] if repeated else []} train one model twice with one seed "
            f"(an entry without @seed uses [train].seed = {t.seed}); give each entry of a model its own seed",
        ),
        (
            all(isinstance(s, float) and 0 < abs(s) < 1 for s in t.tta_shifts),
            f"[train].tta_shifts = {t.tta_shifts}: each shift is a non-zero fraction of the frames in (-1, 1), e.g. [-0.1, 0.1]",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise RecipeError(f"{source}: {message}.")
    for model in recipe.by_backbone:  # each backbone's own settings pass the same checks
        validate(recipe.for_backbone(model), f"{source} [by_backbone.{model}]")
