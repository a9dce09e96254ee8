"""The synthetic SSc-ILD cohort: patients with reference labels and lung function, made from code.

phantom       one synthetic patient assembled from the parts below (generate_case); the generator's model
lungfunction  the patient population (severity, demographics) and the planted lung-function model
anatomy       the patient's body in millimetres: rib cage, lungs, diaphragm, heart, mediastinum, spine
disease       the SSc-ILD pattern (EF, GGO, fibrosis texture) and the reader-like reference labels
trees         vascular and airway trees grown into the lungs, traction bronchiectasis
tubes         tubes (vessels, airways) drawn on a grid: analytic or as partial volume
body          the body outside the lungs on the grid: chest wall, abdomen, heart, bones, scanner table
render        the noiseless CT of one patient on the fine grid, layer by layer
scanner       per-patient field of view and slices, reconstruction blur and noise
fields        smooth random fields and trilinear sampling of coarse fields on grids
writer        the cohort folder: NIfTI images and labels, clinical.csv, dataset.json (generate_cohort)
variety       the features real chests have and a clean phantom lacks (emphysema, bullae, ...)
"""
