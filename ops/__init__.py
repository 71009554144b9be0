"""What lives where in ops/ (one idea per file).

The model, the files a researcher opens to try a new module:
    models.py          TSN: the 2-D backbone, temporal shift, attached blocks, head, partial BN;
                       I3D on the 3-D backbone of archs/i3d.py; build_model picks one;
                       the recompute walker (make_recompute), --pretrain files
    temporal_shift.py  the temporal shift (TSM) and temporal pooling
    non_local.py       attaching blocks after residual blocks (placement, NonLocalWrapper)
    blocks.py          the block registry: @register_block("name") in the block's own file
    rnl.py             the region-based non-local block (+ its builder "rnl" and defaults)
    region_conv.py     RNL's depthwise region convolution in the published weight layout
    attention.py       the (fused) attention core of the non-local blocks
    self_attention.py  attention whose queries are its keys (RNL): a cheaper CPU backward
    recompute.py       recomputing cheap activations in the backward (selective checkpointing)
    memory.py          freed activations given back to the system during a CPU training step
    channel_gate.py    the global-context channel gate before the first RNL block
    nl.py              the classic non-local block (embedded Gaussian, dot product, Gaussian)
    mmaction_compat.py mmaction2's I3D checkpoints read as they are (key mapping, settings)
    param_groups.py    optimizer groups (lr / weight-decay multipliers) from named_parameters()
The data:
    dataset.py         TSNDataSet: list -> sampled frames -> transforms -> clip tensor
    lists.py           list files (records, malformed lines)
    frames.py          frame folders: names, decoding, the frame-folder source (and packed files)
    packed_frames.py   packed frames: a video's frame files in one stored zip (index, reads)
    video_files.py     video files as a source (decoded with video.py's reader)
    video.py           the PyAV video reader
    data_problems.py   bad data: counted, logged once per video, reported
    sampling.py        which frames make a clip (train / val / test, dense, twice)
    transforms.py      group transforms (crops, flips, normalisation)
    device_input.py    uint8 clips from the workers, normalised on the device (InputNorm)
    device_augment.py  --device_aug: workers read JPEG bytes; decode and augment on the device
    randaugment.py     RandAugment drawn once per clip, the same on every frame (--randaugment)
    dataset_config.py  where each dataset's lists and frames live (--data_root)
    synthetic.py       the synthetic dataset of the demo and the tests
Checkpoints, evaluation, shared helpers:
    checkpoint.py      checkpoint files: atomic write, load (.pth.tar, .safetensors), the keys,
                       published names, strict weight loading (imports no model or engine)
    model_loading.py   load_model(path): the network a checkpoint holds
    evaluation.py      test-time views, loaders, multi-view inference, ensembles, gathering
    metrics.py         accuracies and confusion matrix of video scores
    reports.py         score files, prediction CSV, confusion-matrix report
    distributed.py     launch plans and process groups (torchrun, SLURM, spawn)
    utils.py           logging, autocast, moving a batch to the device, top-k, progress bars,
                       output paths checked writable before the work
    atomic.py          the one atomic file write (temporary file, fsync, rename) every writer uses
    output_paths.py    no command writes over one of its inputs (the one rule every tool applies)
    bf16_guard.py      CPU --amp bf16: probe the model's convolutions, route faulty kernels
engine/                the training engine, used only by main.py (see engine/__init__.py)

Imports run one way: main.py, test_models.py, tools/, benchmarks/ -> engine/ -> ops -> archs/
(tests/test_import_graph.py checks it, and that no import inside a function hides a cycle).
"""
