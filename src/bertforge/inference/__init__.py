"""Using trained models: feature extraction, pipelines, serving."""
