"""The network, its training and its use.

network     the network factory (MONAI U-Net) and model files
recipe      the training recipe as the book states it
augment     batched data augmentation on the training device
deepsup     deep supervision: auxiliary decoder outputs and their loss, for training only
device      torch device, CPU threads, number type, batch-loader processes
sampling    training patches and each step's batch from (seed, fold, step)
checkpoint  the training recipe of a fold, resumable checkpoints, the final model file
pretrain    self-supervised pretraining on unlabelled scans: restoring corrupted patches
selftrain   self-training: unlabelled scans, the teacher's pseudo-labels, the masked loss
consistency consistency learning: a mean teacher's labels of a weak view, a student on a strong view
ignore      IGNORE_LABEL, the label value a loss skips (unsure pseudo-labels)
fit         one training step: network, loss, optimiser, schedule; the running means the loop logs
train       one fold's training: its cases, pretrained start or teacher and student, the training loop
loading     which fold models a prediction uses; loading them safely; the ensemble
inference   slice-wise ensemble inference and lung post-processing on the network's grid
predict     out-of-fold prediction of the cohort
controls    the fold ensemble on controls without lung disease (false lesions)
"""
