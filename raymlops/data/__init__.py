"""data: tabular sources (Parquet/CSV/TSV files, folders, URIs), column roles, splits,
profiles, dataset versions (digest and schema), streaming scans and synthetic data.

Layer 1: may import `core`.
"""
