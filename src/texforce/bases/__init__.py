"""Base models: the architectures of the built-ins (random SD, SDXL, SD3, FLUX; the offline world's two models) and
loading any base — a hub id, a local folder or a built-in — as a pipeline ready to sample and train."""
