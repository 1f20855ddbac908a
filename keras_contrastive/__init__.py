"""keras_contrastive: contrastive self-supervised learning for Keras 3 on TensorFlow.

Small composable pieces (losses, augmenters, encoders, heads, optimizers,
evaluators, export) wired by thin trainers that are plain `keras.Model`s with
their own `train_step`, trained with `model.fit`.
"""

from keras_contrastive import augment
from keras_contrastive import callbacks
from keras_contrastive import crops
from keras_contrastive import data
from keras_contrastive import distribute
from keras_contrastive import downstream
from keras_contrastive import ema
from keras_contrastive import encoders
from keras_contrastive import evaluation
from keras_contrastive import export
from keras_contrastive import heads
from keras_contrastive import layers
from keras_contrastive import losses
from keras_contrastive import monitor
from keras_contrastive import negatives
from keras_contrastive import optimizers
from keras_contrastive import pictures
from keras_contrastive import savedmodel
from keras_contrastive import serving
from keras_contrastive.trainers import NNCLR
from keras_contrastive.trainers import MoCoV3
from keras_contrastive.trainers import SimCLR
from keras_contrastive.trainers import SupCon
from keras_contrastive.trainers import SwAV

__version__ = "0.1.0"
