"""Packaging for Connection Manager.

Runtime dependencies are only what the Lambda function imports; everything used to
test, benchmark or deploy lives in the ``dev`` extra so it never ships in the package.
"""
from setuptools import find_packages, setup

setup(
    name="connection-manager",
    version="0.1.0",
    description="Query, correct and sweep WebSocket connection records kept in DynamoDB.",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["models", "models.*", "connection_manager", "connection_manager.*"]),
    include_package_data=True,
    package_data={"connection_manager": ["templates/*.html", "static/*"]},
    install_requires=[
        "pynamodb>=6.1,<7",
        "msgspec>=0.19",
        "aws-lambda-powertools>=3.0,<4",
        "flask>=3.1,<4",
        "tqdm>=4.66",
    ],
    extras_require={
        "dev": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "moto[server,dynamodb]>=5.1",
            "boto3>=1.34",
            "requests>=2.31",
            "hypothesis>=6.100",
            "schemathesis>=4.0",
            "playwright>=1.45",
            "zappa==0.63.0",
            "websockets>=13",
            "mkdocs>=1.6,<2",
            "mkdocs-material>=9.5,<10",
        ],
    },
    entry_points={"console_scripts": ["connection-manager=connection_manager.cli:main"]},
)
