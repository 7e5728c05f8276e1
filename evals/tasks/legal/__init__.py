"""lm-eval task folder (YAML and scoring helpers); a package so the import contracts cover its helpers."""
