"""The network, its training and its use.

network     the network factory (MONAI U-Net) and model files
recipe      the training recipe as the book states it
augment     batched data augmentation on the training device
train       one fold's training loop, checkpoints, resume
predict     out-of-fold and ensemble inference; scan segmentation and which models it uses
"""
