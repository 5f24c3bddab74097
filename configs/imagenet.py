"""The paper's ImageNet recipe (sections 3, 5).

    python -m alexnet_jax.benchmark --config=configs/imagenet.py

Any field can be overridden on the command line, e.g.
``--config.batch_size=32`` or ``--config.model.dtype=bfloat16``.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  # The network (section 3, Figure 2); see alexnet_jax/models.py.
  config.model = ml_collections.ConfigDict(dict(
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
      dtype='float32',  # or 'bfloat16': bfloat16 compute, float32 params
  ))

  # Sections 2 and 4.1; see alexnet_jax/input_pipeline.py.
  config.input = ml_collections.ConfigDict(dict(
      dataset='imagenet2012',
      resize=256,        # shorter side, then the centre square
      crop='paper',      # or 'inception'
      pca_stddev=0.1,    # the PCA colour draw; 0 turns it off
      ten_crop_eval=True,
      shuffle_buffer=16_384,
  ))

  # Section 5: SGD, batch 128, momentum 0.9, weight decay 0.0005, lr 0.01.
  config.batch_size = 128
  config.learning_rate = 0.01
  config.momentum = 0.9
  config.weight_decay = 5e-4
  config.weight_decay_biases = False
  config.num_epochs = 90
  # Devices: 'model' axis 2 puts one tower per device (the paper's split), 1
  # keeps both towers on every device, 0 picks 2 when the devices allow.
  config.model_axis_size = 0
  config.num_train_steps = -1  # > 0 overrides num_epochs
  return config
