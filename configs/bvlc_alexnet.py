"""Caffe's BVLC AlexNet: the paper's two-tower net with Caffe's LRN and
pixel conventions, so that ``python -m alexnet_jax.import_weights
--source=caffe --file=bvlc_alexnet.caffemodel`` loads its trained weights
with the towers intact (docs/other_alexnets.md).

    python -m alexnet_jax.import_weights --source=caffe \\
        --file=bvlc_alexnet.caffemodel --workdir=DIR
    python -m alexnet_jax.evaluate --config=configs/bvlc_alexnet.py \\
        --workdir=DIR

What differs from the paper's net, each a field with the paper's value as
the default in configs/imagenet.py:

* LRN over all channels of a layer (the window crosses the towers), alpha
  1e-4 divided by the window of 5 (2e-5 per squared term here), k = 1;
* 227x227 inputs (no padding needed for 55x55 conv1 outputs);
* BGR input minus the mean of ILSVRC 2012's training images (Caffe
  subtracts the 256x256 mean image; its per-channel means are used here);
* no PCA colour draw, and ReLU biases initialized to 0.1 for training.

The training recipe is otherwise the paper's.
"""

from configs import imagenet


def get_config():
  config = imagenet.get_config()
  config.model.update(image_size=227, lrn_bias=1.0, lrn_alpha=1e-4 / 5,
                      lrn_across_towers=True, relu_bias_init=0.1)
  # The channel means of Caffe's ilsvrc_2012_mean.npy, given here as RGB.
  config.input.update(mean_rgb=(122.68, 116.67, 104.01),
                      channel_order='BGR', pca_stddev=0.0)
  return config
