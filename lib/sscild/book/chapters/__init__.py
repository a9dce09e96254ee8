"""The chapters' tables and sentences: the analyses' numbers formatted for the page.

data          the Data chapter: cohort table (Table 1), voxel grids, validation problems, label maps, planted model
segmentation  the Segmentation chapter: score tables, agreement, baseline comparison, worst-patient sentences
clinical      the Clinical chapter: correlation tables, planted model, computed sentences
"""
