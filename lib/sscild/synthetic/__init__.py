"""The synthetic SSc-ILD cohort: patients with reference labels and lung function, made from code.

phantom     anatomy, disease, scanner and lung function of one patient; the cohort writer
variety     the features real chests have and a clean phantom lacks (emphysema, bullae, ...)
"""
