"""HED edges: fine-tuning command and the BSDS500 boundary benchmark (ODS/OIS/AP)."""
