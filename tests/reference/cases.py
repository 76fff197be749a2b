"""The strings the MiniLM reference was computed on (tests/reference/make_minilm_reference.py)."""
import gzip
import json
from pathlib import Path

MAX_LENGTH = 128
SENTENCES = [
    "A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
    "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.", "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.", "The new movie is awesome.",
    "The new movie is so great.", "How do I reset my password?", "I forgot my login credentials.",
    "The cat sits outside.", "The dog plays in the garden.",
    "Ceci n'est pas une pipe.", "数据库服务器", "🎉 Launch day! 🚀",
]
HANDWRITTEN = [
    "", " ", "\t\n", "Hello, World!", "HELLO world", "hello   world", "Café naïve résumé façade",
    "Ångström São Paulo Zürich Kraków", "ÉCOLE ÉLÉMENTAIRE", "e\u0301le\u0300ve (combining accents)",
    "日本語のテキストを分割する", "中文文本分类", "한국어 문장입니다", "Привет, как дела?", "Γειά σου Κόσμε",
    "مرحبا بالعالم", "नमस्ते दुनिया", "สวัสดีครับ", "👍🏽 great job 🎉🎉", "family: 👨‍👩‍👧‍👦", "flags 🇫🇷🇩🇪",
    "https://www.example.com/path/to/page?query=1&b=two#frag", "mailto:someone@example.org",
    "user.name+tag@sub.example.co.uk", "C:\\Program Files\\App\\app.exe", "/usr/bin/env python3 -m pip",
    "def f(x): return x**2 + 1  # comment", "<div class=\"x\">a &amp; b</div>", "{\"key\": [1, 2.5, null]}",
    "3.14159 1,000,000 -42 1e-9 0x1F", "$100 €50 £20 ¥1000 ₹500", "50% off!!! ???", "don't won't can't it's",
    "state-of-the-art, well-known", "U.S.A. e.g. i.e. etc.", "zero\u200bwidth\u200cjoin\u200dhere",
    "soft\u00adhyphen", "non\u00a0breaking\u00a0space", "tab\tseparated\tvalues", "line\r\nbreaks\rhere",
    "control\x07bell\x1bescape", "replacement \ufffd char", "ﬁ ligature ﬂ", "full-width ＡＢＣ１２３",
    "superscript x² and ½", "™ © ® ° ± × ÷", "antidisestablishmentarianism", "pneumonoultramicroscopicsilicovolcanoconiosis",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "word " * 300, "The quick brown fox jumps over the lazy dog. " * 40, "#hashtag @mention r/subreddit",
    "[CLS] [SEP] [PAD] [MASK] [UNK] literal tokens", "MiXeD CaSe WoRdS", "...", "!!!", "¿Qué tal? ¡Bien!",
]
DATASET = Path(__file__).parents[2] / "factory" / "datasets" / "debian_descriptions.jsonl.gz"


def tokenizer_cases() -> list[str]:
    """The handwritten strings, then every 12th description of the bundled Debian dataset."""
    with gzip.open(DATASET, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    return HANDWRITTEN + [row["text"] for row in rows[::12]]
