"""Figure 1: ReLU against tanh in the paper's four-layer CIFAR-10-style net.

    python -m experiments.relu_tanh --config=configs/relu_tanh.py \\
        --workdir=/tmp/relu_tanh

Inherits the default config's dataset (the generated ``synthetic_shapes``;
``--config.input.dataset=cifar10`` runs the paper's setting) and seed. The
paper names neither the net's widths nor its learning rates ("chosen
independently for each network to make training as fast as possible"); we
take cuda-convnet's small CIFAR-10 net (three 5x5 conv layers of 32, 32
and 64 kernels, each followed by 3/2 max pooling, then the softmax layer),
24x24 centre crops as in cuda-convnet's CIFAR-10 nets, no augmentation and
no regularization (as in Figure 1), and sweep the rates below on seed 0.
Of the inherited fields the experiment reads the input's dataset, data
directory, train split and resize, the model's image size and class count,
and the seed; the others belong to AlexNet and are not used here.
"""

from ml_collections import config_dict

from configs import default


def get_config():
  config = default.get_config()
  config.model.image_size = 24
  config.input.resize = 28  # crop 24 of 28, as the paper's 224 of 256
  # init_stddev None: LeCun normal; 0.01 is the paper's AlexNet init.
  config.cnn = dict(features=(32, 32, 64), kernel_size=5,
                    init_stddev=config_dict.placeholder(float))
  config.activations = ('relu', 'tanh')
  # Tried in this order, from the middle out: a run slower than the fastest
  # so far is stopped there, so a good first guess saves time.
  config.learning_rates = (0.01, 0.03, 0.003, 0.1, 0.001)
  config.momentum = 0.9
  config.batch_size = 128
  config.num_epochs = 30  # the most any one run trains
  config.target_train_error = 0.25
  config.seeds = 3
  return config
