from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
requirements = [
    line.strip()
    for line in (here / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setup(
    name="hrda_d2",
    version="0.1.0",
    description="HRDA (context-aware high-resolution domain-adaptive semantic segmentation) in Detectron2",
    long_description=(here / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["hrda_d2", "hrda_d2.*", "hrda_d2_deploy"]),
    python_requires=">=3.10",
    install_requires=requirements,
    extras_require={"test": [
        line.strip()
        for line in (here / "requirements-test.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#") and not line.startswith("-r")
    ]},
)
