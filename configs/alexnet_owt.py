"""torchvision's AlexNet (Krizhevsky's "one weird trick" net), trained by
the same main job; see alexnet_jax/models/alexnet_owt.py and
docs/other_alexnets.md.

    python -m alexnet_jax.main --config=configs/alexnet_owt.py --workdir=DIR

The net has one tower, so the devices split the batch only (the model axis
is 1). Its pixel convention is torchvision's (RGB, its mean and std), so
that ``python -m alexnet_jax.import_weights --source=torchvision`` can load
torchvision's trained weights into a workdir of this config. The recipe
follows torchvision's classification reference: batch 256, learning rate
0.01 divided by 10 every 30 epochs, weight decay 1e-4 on every parameter,
random-resized ("inception") crops without the PCA colour draw.
"""

import ml_collections

from configs import imagenet


def get_config():
  config = imagenet.get_config()
  config.model = ml_collections.ConfigDict(dict(
      name='alexnet_owt',
      num_classes=1000,
      width=1.0,
      image_size=224,
      dropout_rate=0.5,
      dtype='float32',
  ))
  config.input.update(mean_rgb=imagenet.TORCHVISION_MEAN_RGB,
                      std_rgb=imagenet.TORCHVISION_STD_RGB, channel_order='RGB',
                      crop='inception', pca_stddev=0.0)
  config.batch_size = 256
  config.weight_decay = 1e-4
  config.weight_decay_biases = True
  config.schedule = 'step'
  config.step_epochs = (30, 60)
  return config
