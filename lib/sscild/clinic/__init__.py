"""Outputs for a clinician: one scan or a follow-up pair, in files a viewer opens.

segment     segment one new scan: label map, volumes and extent stage, every output below
qc          quality control of a segmented scan: flags, uncertainty summary, refusal
figures     the overlay montage of a scan and the slice drawing it shares with the book
zones       EF / GGO extent per lung zone (sides, thirds, peripheral band)
densitometry  lung attenuation histogram per zone: mean, SD, skewness, kurtosis, HAA, share below -950 HU
viewer      3D Slicer .seg.nrrd, ITK-SNAP labels, DICOM Segmentation
dicom_sr    DICOM Structured Report (TID 1500) of the volumes
scanreport  the self-contained HTML page per scan and per comparison
batch       segment a folder of scans
compare     the change between a baseline scan and a follow-up
"""
