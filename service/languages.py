"""The model's languages by name, and how the language detector's codes map onto them.

M2M100 (418M and 1.2B) covers 100 languages, named here as on its model card. The detector
(fastText lid.176, see service/detect.py) knows 176 languages under its own codes: most are the
model's, a few are older or finer-grained codes for one of them (ALIASES), and the rest are
languages the model cannot translate from.
"""

from __future__ import annotations

# fromLang "auto": each text's language is detected (service/detect.py).
AUTO = "auto"

# English names of the M2M100 languages (its model card's list).
NAMES: dict[str, str] = {
    "af": "Afrikaans", "am": "Amharic", "ar": "Arabic", "ast": "Asturian", "az": "Azerbaijani", "ba": "Bashkir",
    "be": "Belarusian", "bg": "Bulgarian", "bn": "Bengali", "br": "Breton", "bs": "Bosnian", "ca": "Catalan",
    "ceb": "Cebuano", "cs": "Czech", "cy": "Welsh", "da": "Danish", "de": "German", "el": "Greek", "en": "English",
    "es": "Spanish", "et": "Estonian", "fa": "Persian", "ff": "Fulah", "fi": "Finnish", "fr": "French",
    "fy": "Western Frisian", "ga": "Irish", "gd": "Scottish Gaelic", "gl": "Galician", "gu": "Gujarati",
    "ha": "Hausa", "he": "Hebrew", "hi": "Hindi", "hr": "Croatian", "ht": "Haitian Creole", "hu": "Hungarian",
    "hy": "Armenian", "id": "Indonesian", "ig": "Igbo", "ilo": "Iloko", "is": "Icelandic", "it": "Italian",
    "ja": "Japanese", "jv": "Javanese", "ka": "Georgian", "kk": "Kazakh", "km": "Central Khmer", "kn": "Kannada",
    "ko": "Korean", "lb": "Luxembourgish", "lg": "Ganda", "ln": "Lingala", "lo": "Lao", "lt": "Lithuanian",
    "lv": "Latvian", "mg": "Malagasy", "mk": "Macedonian", "ml": "Malayalam", "mn": "Mongolian", "mr": "Marathi",
    "ms": "Malay", "my": "Burmese", "ne": "Nepali", "nl": "Dutch", "no": "Norwegian", "ns": "Northern Sotho",
    "oc": "Occitan", "or": "Oriya", "pa": "Punjabi", "pl": "Polish", "ps": "Pashto", "pt": "Portuguese",
    "ro": "Romanian", "ru": "Russian", "sd": "Sindhi", "si": "Sinhala", "sk": "Slovak", "sl": "Slovenian",
    "so": "Somali", "sq": "Albanian", "sr": "Serbian", "ss": "Swati", "su": "Sundanese", "sv": "Swedish",
    "sw": "Swahili", "ta": "Tamil", "th": "Thai", "tl": "Tagalog", "tn": "Tswana", "tr": "Turkish",
    "uk": "Ukrainian", "ur": "Urdu", "uz": "Uzbek", "vi": "Vietnamese", "wo": "Wolof", "xh": "Xhosa",
    "yi": "Yiddish", "yo": "Yoruba", "zh": "Chinese", "zu": "Zulu",
}  # fmt: skip

# fastText lid.176's labels (https://fasttext.cc/docs/en/language-identification.html).
DETECTOR_CODES: frozenset[str] = frozenset(
    """af als am an ar arz as ast av az azb ba bar bcl be bg bh bn bo bpy br bs bxr ca cbk ce ceb ckb co cs cv cy da
    de diq dsb dty dv el eml en eo es et eu fa fi fr frr fy ga gd gl gn gom gu gv he hi hif hr hsb ht hu hy ia id ie
    ilo io is it ja jbo jv ka kk km kn ko krc ku kv kw ky la lb lez li lmo lo lrc lt lv mai mg mhr min mk ml mn mr
    mrj ms mt mwl my myv mzn nah nap nds ne new nl nn no oc or os pa pam pfl pl pms pnb ps pt qu rm ro ru rue sa
    sah sc scn sco sd sh si sk sl so sq sr su sv sw ta te tg th tk tl tr tt tyv ug uk ur uz vec vep vi vls vo wa
    war wuu xal xmf yi yo yue zh""".split()
)

# Detector codes that name one of the model's languages differently: old ISO codes (iw, jw, in, ji),
# Norwegian's written standards, and Chinese and Arabic varieties written the way the model reads
# them. Closer dialects of other languages (Alemannic, Bavarian...) are not folded in: translating
# them as the standard language would be a guess the client did not ask for.
ALIASES: dict[str, str] = {
    "iw": "he", "jw": "jv", "in": "id", "ji": "yi", "nn": "no", "nb": "no", "yue": "zh", "wuu": "zh", "arz": "ar",
}  # fmt: skip


def model_code(detector_code: str) -> str:
    """The model's code for a detector label (itself when there is no alias)."""
    return ALIASES.get(detector_code, detector_code)


def detectable(languages: frozenset[str] | set[str] | tuple[str, ...]) -> frozenset[str]:
    """Those of `languages` the detector can name (directly or through an alias)."""
    named = {model_code(code) for code in DETECTOR_CODES}
    return frozenset(code for code in languages if code in named)


def name(code: str) -> str:
    """A language's English name; its code when it is not one of M2M100's."""
    return NAMES.get(code, code)
