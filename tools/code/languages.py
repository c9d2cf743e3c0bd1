"""Languages by file extension (or well-known file name), and their line-comment markers."""

from __future__ import annotations

from pathlib import PurePosixPath

LANGUAGE_BY_SUFFIX: dict[str, str] = {
    ".py": "Python",
    ".pyi": "Python",
    ".ipynb": "Jupyter Notebook",
    ".js": "JavaScript",
    ".mjs": "JavaScript",
    ".cjs": "JavaScript",
    ".jsx": "JavaScript",
    ".ts": "TypeScript",
    ".mts": "TypeScript",
    ".cts": "TypeScript",
    ".tsx": "TypeScript",
    ".go": "Go",
    ".rs": "Rust",
    ".java": "Java",
    ".kt": "Kotlin",
    ".kts": "Kotlin",
    ".scala": "Scala",
    ".c": "C",
    ".h": "C",
    ".cc": "C++",
    ".cpp": "C++",
    ".cxx": "C++",
    ".hpp": "C++",
    ".hh": "C++",
    ".hxx": "C++",
    ".cs": "C#",
    ".m": "Objective-C",
    ".swift": "Swift",
    ".rb": "Ruby",
    ".php": "PHP",
    ".lua": "Lua",
    ".pl": "Perl",
    ".sol": "Solidity",
    ".erl": "Erlang",
    ".zig": "Zig",
    ".vue": "Vue",
    ".sh": "Shell",
    ".bash": "Shell",
    ".zsh": "Shell",
    ".ps1": "PowerShell",
    ".sql": "SQL",
    ".html": "HTML",
    ".htm": "HTML",
    ".css": "CSS",
    ".scss": "CSS",
    ".md": "Markdown",
    ".rst": "reStructuredText",
    ".toml": "TOML",
    ".yaml": "YAML",
    ".yml": "YAML",
    ".json": "JSON",
    ".ini": "INI",
    ".cfg": "INI",
    ".xml": "XML",
    ".proto": "Protocol Buffers",
    ".tf": "Terraform",
}

LANGUAGE_BY_NAME: dict[str, str] = {
    "Dockerfile": "Dockerfile",
    "Containerfile": "Dockerfile",
    "Makefile": "Makefile",
    "GNUmakefile": "Makefile",
    "CMakeLists.txt": "CMake",
    "Jenkinsfile": "Groovy",
}

_HASH = ("#",)
_SLASHES = ("//",)
LINE_COMMENT: dict[str, tuple[str, ...]] = {
    "Python": _HASH,
    "Shell": _HASH,
    "Ruby": _HASH,
    "Perl": _HASH,
    "TOML": _HASH,
    "YAML": _HASH,
    "Dockerfile": _HASH,
    "Makefile": _HASH,
    "CMake": _HASH,
    "PowerShell": _HASH,
    "Terraform": ("#", "//"),
    "INI": ("#", ";"),
    "SQL": ("--",),
    "Lua": ("--",),
    "Erlang": ("%",),
    "PHP": ("//", "#"),
    **dict.fromkeys(
        (
            "JavaScript",
            "TypeScript",
            "Go",
            "Rust",
            "Java",
            "Kotlin",
            "Scala",
            "C",
            "C++",
            "C#",
            "Objective-C",
            "Swift",
            "Solidity",
            "Zig",
            "Vue",
            "Groovy",
            "Protocol Buffers",
        ),
        _SLASHES,
    ),
}

# Languages lizard measures; Python is left to radon.
LIZARD_SUFFIXES: tuple[str, ...] = tuple(
    suffix
    for suffix, language in LANGUAGE_BY_SUFFIX.items()
    if language
    in {
        "JavaScript",
        "TypeScript",
        "Go",
        "Rust",
        "Java",
        "Kotlin",
        "Scala",
        "C",
        "C++",
        "C#",
        "Objective-C",
        "Swift",
        "Ruby",
        "PHP",
        "Lua",
        "Perl",
        "Solidity",
        "Erlang",
        "Zig",
        "Vue",
    }
)


def language_for(path: str) -> str | None:
    """The language of a project file by name, then extension; None for unknown kinds."""
    pure = PurePosixPath(path)
    return LANGUAGE_BY_NAME.get(pure.name) or LANGUAGE_BY_SUFFIX.get(pure.suffix.lower())
