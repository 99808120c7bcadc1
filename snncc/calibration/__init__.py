"""Data-driven conversion: calibration data, threshold recording, DA-QCFS calibration (Algorithm 1)."""
