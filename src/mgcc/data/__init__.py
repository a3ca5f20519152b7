"""Ultrasound datasets: phantom generator, ingestion of BUSI-style and generic folders, checks, split, datalist."""
