"""Trainers: one method per file, sharing `ContrastiveTrainer`."""

from keras_contrastive.trainers.base import ContrastiveTrainer
from keras_contrastive.trainers.moco_v3 import MoCoV3
from keras_contrastive.trainers.nnclr import NNCLR
from keras_contrastive.trainers.simclr import SimCLR
from keras_contrastive.trainers.supcon import SupCon
from keras_contrastive.trainers.swav import SwAV
