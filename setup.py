from setuptools import find_packages, setup

setup(
    name="halp-trt",
    version="0.1.0",
    description="Latency-driven structured pruning (HALP) for TensorRT and ONNX Runtime",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["halp_trt", "halp_trt.*"]),
    python_requires=">=3.10",
    install_requires=[
        # torch/torchvision: this project's machines serve exactly this pair from local files
        "torch==2.14.1",
        "torchvision==0.29.1",
        "torch-pruning==1.6.1",
        "onnx>=1.16",
        "onnxruntime>=1.18",
        "numpy>=1.24",
        "click>=8.1",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "scipy>=1.10",
        "scikit-learn>=1.3",
    ],
    extras_require={
        "trt": ["tensorrt>=10.0", "cuda-python>=12.0"],
        "gpu": ["onnxruntime-gpu>=1.18"],
        "ort": ["onnxruntime>=1.18"],
        "openvino": ["openvino>=2025.0"],
        "timm": ["timm>=1.0"],
        "dense": ["torchmetrics>=1.0", "pycocotools>=2.0"],
        "dev": ["pytest>=7", "pytest-timeout>=2.1", "ruff>=0.6", "openvino>=2025.0", "timm>=1.0",
                "torchmetrics>=1.0", "pycocotools>=2.0"],
    },
    entry_points={"console_scripts": ["halp-trt=halp_trt.cli:main"]},
)
