"""The paper's ImageNet recipe (sections 3, 5); the base of every config.

    python -m alexnet_jax.main --config=configs/imagenet.py --workdir=DIR

Any field can be overridden on the command line, e.g.
``--config.batch_size=32`` or ``--config.model.dtype=bfloat16``.

Two input sources (``input.source``): 'tfds' decodes, resizes and augments
every original JPEG every epoch on the host; 'prepared' reads the paper's
256x256 squares, made once, and leaves the reflection, colour and mean to
the device (4x to 20x less host work an image, see docs/input.md, "Feeding
a GPU"):

    python -m alexnet_jax.prepare --config=configs/imagenet.py
    python -m alexnet_jax.main --config=configs/imagenet.py --workdir=DIR \
        --config.input.source=prepared
"""

import ml_collections

# torchvision's transforms.Normalize constants, on a 0..255 scale: ImageNet's
# per-channel pixel mean and std (dividing by the std gives the inputs about
# unit variance).
TORCHVISION_MEAN_RGB = (123.675, 116.28, 103.53)
TORCHVISION_STD_RGB = (58.395, 57.12, 57.375)


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  # The network (section 3, Figure 2): name picks alexnet_jax/models/<name>.py,
  # the other fields are that model's (alexnet_jax/models/alexnet.py).
  config.model = ml_collections.ConfigDict(dict(
      name='alexnet',
      num_classes=1000,
      towers=2,
      activation='relu',
      use_lrn=True,
      # Section 3.3, in the paper's convention (alpha per squared term).
      lrn_depth_radius=2,
      lrn_bias=2.0,
      lrn_alpha=1e-4,
      lrn_beta=0.75,
      pool_window=3,   # overlapping pooling, section 3.4
      pool_stride=2,
      width=1.0,
      image_size=224,
      dropout_rate=0.5,
      init_stddev=0.01,  # section 5: weights N(0, 0.01)
      relu_bias_init=1.0,  # section 5: conv2, conv4, conv5, fc6, fc7
      # Caffe's BVLC net: True (docs/other_alexnets.md).
      lrn_across_towers=False,
      # Compute dtype: 'float32', 'bfloat16' or 'float16' (float32 params;
      # float16 needs loss_scale='dynamic'; alexnet_jax/precision.py).
      dtype='float32',
      # How conv1, conv2-5, pooling and LRN are lowered: the same math,
      # 'auto' picks by backend (models/alexnet.py, IMPLEMENTATIONS).
      conv1_impl='auto',
      conv_impl='auto',
      pool_impl='auto',
      lrn_impl='auto',
  ))

  # Sections 2 and 4.1; see alexnet_jax/input_pipeline.py.
  config.input = ml_collections.ConfigDict(dict(
      dataset='imagenet2012',
      resize=256,        # shorter side, then the centre square
      crop='paper',      # or 'inception'
      pca_stddev=0.1,    # the PCA colour draw; 0 turns it off
      # The net's pixel convention, 0..255 scale: (rgb - mean_rgb) / std_rgb,
      # channels in channel_order. Section 2: minus the mean RGB, RGB.
      mean_rgb=(123.68, 116.78, 103.94),
      std_rgb=(1.0, 1.0, 1.0),
      channel_order='RGB',  # or 'BGR' (Caffe's nets)
      ten_crop_eval=True,  # the final evaluation; each epoch's is centre
      shuffle_buffer=16_384,
      train_split='train',
      eval_split='validation',
      data_dir='',  # tfds's data directory; '' is its default
      # Where batches come from (alexnet_jax/prepared.py):
      # 'tfds': decode, resize and augment each original image every epoch;
      # 'prepared': the 256x256 squares made once by
      #   python -m alexnet_jax.prepare --config=<this config>
      #   (the host cuts uint8 patches, the device does the rest).
      source='tfds',
      store_dir='',  # '' is <data_dir>/alexnet_prepared/<dataset>-<resize>-<format>
      store_format='jpeg',  # or 'raw': 4x the disk, 4x less host work
      store_jpeg_quality=90,
      # Host batches a thread makes ahead of the step that takes them; the
      # next epoch's pipeline then starts during the evaluation.
      batches_ahead=4,
  ))

  # Section 5: SGD, batch 128, momentum 0.9, weight decay 0.0005, lr 0.01.
  config.batch_size = 128
  config.learning_rate = 0.01
  config.momentum = 0.9
  config.weight_decay = 5e-4
  config.weight_decay_biases = False
  # 'dynamic': scale the loss (x2^15 to start, halved on overflow), needed
  # for model.dtype='float16'; 'none': the paper's plain float32 gradients.
  config.loss_scale = 'none'
  config.num_epochs = 90
  config.num_train_steps = -1  # > 0 overrides num_epochs

  # Learning rate (alexnet_jax/schedules.py). The paper's: divided by 10
  # when the validation error stops improving, three times at most. The
  # paper gives no patience; 3 epochs without a 0.1% gain is ours.
  config.schedule = 'plateau'  # or 'step' (at step_epochs), 'cosine'
  config.plateau = ml_collections.ConfigDict(dict(
      patience=3, tolerance=0.001, factor=0.1, max_drops=3))
  config.step_epochs = (30, 60, 80)
  config.warmup_epochs = 5.0  # cosine only

  # Devices: 'model' axis 2 puts one tower per device (the paper's split), 1
  # keeps both towers on every device, 0 picks 2 when the devices allow.
  config.model_axis_size = 0
  config.num_cpu_devices = 0  # > 0: split the CPU into this many devices

  config.log_every_steps = 100
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  # > 0: a jax.profiler trace of this many steps, taken on process 0 after
  # profile_after_steps steps of warm-up (compilation, input start-up), into
  # <workdir>/plugins/profile (TensorBoard's profile tab, or Perfetto).
  config.profile_steps = 0
  config.profile_after_steps = 10
  return config
