"""Policy prompts that ask for an answer in the routed language.

Three modes (config.prompt.mode):
* 'tag'     - the reference: question + "\\n<|out_lang_xx|>". Only a warm-started policy follows it
              (a base model ignores it: 0/8 compliance measured on Gemma-3-270M).
* 'system'  - an instruction in the target language ("Antworte auf Deutsch."), as a system turn
              for chat models, or a first line for base models.
* 'fewshot' - the instruction plus one solved exemplar written in the target language, and an
              answer cue in the target language; base models continue the pattern, so this is the
              mode that gives real compliance on a base model (the demo's choice).

The question itself always stays in its original language: the router decides the language of
the *answer*.
"""
from __future__ import annotations

import dataclasses
from typing import Any

MODES = ("tag", "system", "fewshot")
LLAMA_DATE = "26 Jul 2024"  # the Llama 3 chat template's own fallback date
CHAT_TEMPLATES = ("auto", "never", "always")

# code: (instruction, question label, answer label, exemplar question, exemplar answer)
LANGUAGE_TEXT = {
    "en": ("Answer in English.", "Question", "Answer",
           "A baker makes 12 rolls in the morning and 8 in the afternoon. How many rolls does he make in total?",
           "In the morning he makes 12 rolls and in the afternoon 8. 12 + 8 = 20. The answer is 20."),
    "de": ("Antworte auf Deutsch.", "Frage", "Antwort",
           "Ein Bäcker backt morgens 12 Brötchen und nachmittags 8. Wie viele Brötchen backt er insgesamt?",
           "Morgens backt er 12 Brötchen und nachmittags 8. 12 + 8 = 20. Die Antwort ist 20."),
    "fr": ("Réponds en français.", "Question", "Réponse",
           "Un boulanger fait 12 petits pains le matin et 8 l'après-midi. Combien de petits pains fait-il au total ?",
           "Le matin, il fait 12 petits pains et l'après-midi 8. 12 + 8 = 20. La réponse est 20."),
    "es": ("Responde en español.", "Pregunta", "Respuesta",
           "Un panadero hace 12 panecillos por la mañana y 8 por la tarde. ¿Cuántos panecillos hace en total?",
           "Por la mañana hace 12 panecillos y por la tarde 8. 12 + 8 = 20. La respuesta es 20."),
    "it": ("Rispondi in italiano.", "Domanda", "Risposta",
           "Un fornaio prepara 12 panini al mattino e 8 al pomeriggio. Quanti panini prepara in totale?",
           "Al mattino prepara 12 panini e al pomeriggio 8. 12 + 8 = 20. La risposta è 20."),
    "pt": ("Responda em português.", "Pergunta", "Resposta",
           "Um padeiro faz 12 pães de manhã e 8 à tarde. Quantos pães ele faz no total?",
           "De manhã ele faz 12 pães e à tarde 8. 12 + 8 = 20. A resposta é 20."),
    "nl": ("Antwoord in het Nederlands.", "Vraag", "Antwoord",
           "Een bakker bakt 's ochtends 12 broodjes en 's middags 8. Hoeveel broodjes bakt hij in totaal?",
           "'s Ochtends bakt hij 12 broodjes en 's middags 8. 12 + 8 = 20. Het antwoord is 20."),
    "pl": ("Odpowiedz po polsku.", "Pytanie", "Odpowiedź",
           "Piekarz piecze rano 12 bułek, a po południu 8. Ile bułek piecze w sumie?",
           "Rano piecze 12 bułek, a po południu 8. 12 + 8 = 20. Odpowiedź to 20."),
    "ru": ("Отвечай на русском языке.", "Вопрос", "Ответ",
           "Пекарь печёт утром 12 булочек, а днём 8. Сколько всего булочек он печёт?",
           "Утром он печёт 12 булочек, а днём 8. 12 + 8 = 20. Ответ: 20."),
    "ar": ("أجب باللغة العربية.", "السؤال", "الإجابة",
           "يخبز خباز 12 رغيفًا في الصباح و8 أرغفة بعد الظهر. كم رغيفًا يخبز في المجموع؟",
           "في الصباح يخبز 12 رغيفًا وبعد الظهر 8 أرغفة. 12 + 8 = 20. الإجابة هي 20."),
    "zh": ("请用中文回答。", "问题", "回答",
           "一位面包师早上做了12个面包，下午做了8个。他一共做了多少个面包？",
           "他早上做了12个面包，下午做了8个。12 + 8 = 20。答案是20。"),
    "ja": ("日本語で答えてください。", "質問", "回答",
           "パン屋さんは朝に12個、午後に8個のパンを焼きます。全部で何個のパンを焼きますか？",
           "朝に12個、午後に8個焼きます。12 + 8 = 20。答えは20です。"),
    "ko": ("한국어로 답하세요.", "질문", "답변",
           "제빵사가 아침에 빵 12개, 오후에 8개를 굽습니다. 모두 몇 개의 빵을 굽습니까?",
           "아침에 12개, 오후에 8개를 굽습니다. 12 + 8 = 20. 답은 20입니다."),
    "vi": ("Hãy trả lời bằng tiếng Việt.", "Câu hỏi", "Trả lời",
           "Một thợ làm bánh làm 12 ổ bánh mì vào buổi sáng và 8 ổ vào buổi chiều. Tổng cộng anh ấy làm bao nhiêu ổ bánh mì?",
           "Buổi sáng anh ấy làm 12 ổ và buổi chiều 8 ổ. 12 + 8 = 20. Câu trả lời là 20."),
    "id": ("Jawablah dalam bahasa Indonesia.", "Pertanyaan", "Jawaban",
           "Seorang tukang roti membuat 12 roti di pagi hari dan 8 roti di sore hari. Berapa banyak roti yang ia buat seluruhnya?",
           "Di pagi hari ia membuat 12 roti dan di sore hari 8 roti. 12 + 8 = 20. Jawabannya adalah 20."),
    "th": ("กรุณาตอบเป็นภาษาไทย", "คำถาม", "คำตอบ",
           "คนทำขนมปังอบขนมปัง 12 ก้อนในตอนเช้าและ 8 ก้อนในตอนบ่าย เขาอบขนมปังทั้งหมดกี่ก้อน",
           "ตอนเช้าเขาอบ 12 ก้อน และตอนบ่าย 8 ก้อน 12 + 8 = 20 คำตอบคือ 20"),
    "sw": ("Jibu kwa Kiswahili.", "Swali", "Jibu",
           "Mwokaji anaoka mikate 12 asubuhi na mikate 8 mchana. Anaoka mikate mingapi kwa jumla?",
           "Asubuhi anaoka mikate 12 na mchana mikate 8. 12 + 8 = 20. Jibu ni 20."),
    "bn": ("বাংলায় উত্তর দিন।", "প্রশ্ন", "উত্তর",
           "একজন রুটিওয়ালা সকালে ১২টি রুটি এবং বিকেলে ৮টি রুটি বানায়। সে মোট কয়টি রুটি বানায়?",
           "সকালে সে ১২টি রুটি এবং বিকেলে ৮টি রুটি বানায়। ১২ + ৮ = ২০। উত্তর হলো ২০।"),
    "te": ("తెలుగులో సమాధానం ఇవ్వండి.", "ప్రశ్న", "సమాధానం",
           "ఒక బేకరీ వ్యక్తి ఉదయం 12 రొట్టెలు, మధ్యాహ్నం 8 రొట్టెలు తయారు చేస్తాడు. మొత్తం ఎన్ని రొట్టెలు తయారు చేస్తాడు?",
           "ఉదయం 12 రొట్టెలు, మధ్యాహ్నం 8 రొట్టెలు తయారు చేస్తాడు. 12 + 8 = 20. సమాధానం 20."),
    "hi": ("हिंदी में उत्तर दें।", "प्रश्न", "उत्तर",
           "एक बेकर सुबह 12 ब्रेड और दोपहर में 8 ब्रेड बनाता है। वह कुल कितनी ब्रेड बनाता है?",
           "सुबह वह 12 ब्रेड और दोपहर में 8 ब्रेड बनाता है। 12 + 8 = 20। उत्तर 20 है।"),
    "tr": ("Türkçe cevap ver.", "Soru", "Cevap",
           "Bir fırıncı sabah 12, öğleden sonra 8 ekmek yapıyor. Toplam kaç ekmek yapıyor?",
           "Sabah 12, öğleden sonra 8 ekmek yapıyor. 12 + 8 = 20. Cevap 20."),
}


def check_languages(codes, mode: str) -> None:
    """Start-up check: every routable language needs its texts in the non-tag modes."""
    if mode not in MODES:
        raise ValueError(f"prompt.mode={mode!r}; expected one of {MODES}")
    if mode != "tag":
        missing = [c for c in codes if c not in LANGUAGE_TEXT]
        if missing:
            raise ValueError(f"prompt.mode={mode!r} has no instruction/exemplar for languages {missing} "
                             f"(known: {sorted(LANGUAGE_TEXT)}); add them to lrpo_jax/data/prompts.py "
                             f"LANGUAGE_TEXT or use mode 'tag'")


def language_code(value, where: str) -> str:
    """A language as the training data reads it (ISO 639-1/639-3 code or English name, any case:
    'German' -> 'de'); anything else is a ValueError naming `where` and the languages with texts."""
    from lrpo_jax import vocab
    try:
        return vocab.normalize_language(value, where)
    except vocab.UnknownKeyError as e:
        raise ValueError(f"{e}; languages with prompt texts: {sorted(LANGUAGE_TEXT)}") from None


def _texts(target: str) -> tuple[str, ...]:
    if target not in LANGUAGE_TEXT:  # not a bare KeyError from deep inside prompt building
        raise ValueError(f"no prompt instruction/exemplar for answer language {target!r}; known languages: "
                         f"{sorted(LANGUAGE_TEXT)} (add it to lrpo_jax/data/prompts.py LANGUAGE_TEXT or use "
                         f"prompt.mode 'tag')")
    return LANGUAGE_TEXT[target]


@dataclasses.dataclass
class PromptBuilder:
    """Builds prompt text and token ids for (question, target language)."""

    tokenizer: Any
    mode: str = "fewshot"
    chat_template: str = "auto"  # auto: use the tokenizer's template if it has one

    def __post_init__(self):
        check_languages((), self.mode)
        has = bool(getattr(self.tokenizer, "chat_template", None))
        if self.chat_template not in CHAT_TEMPLATES:
            raise ValueError(f"prompt.chat_template={self.chat_template!r}; expected auto, never or always")
        if self.chat_template == "always" and not has:
            raise ValueError("prompt.chat_template='always' but the tokenizer has no chat template")
        self.use_chat = has and self.chat_template != "never"

    def messages(self, question: str, target: str) -> list[dict]:
        question = question.strip()
        if self.mode == "tag":
            return [{"role": "user", "content": f"{question}\n<|out_lang_{target}|>"}]
        instruction, _, _, ex_q, ex_a = _texts(target)
        msgs = [{"role": "system", "content": instruction}]
        if self.mode == "fewshot":
            msgs += [{"role": "user", "content": ex_q}, {"role": "assistant", "content": ex_a}]
        return msgs + [{"role": "user", "content": question}]

    def text(self, question: str, target: str) -> str:
        if self.use_chat:
            # date_string pins Llama 3's "Today Date" header, which would otherwise be today's date: a
            # prompt must not change with the calendar (resume, processes on hosts in other time zones).
            return self.tokenizer.apply_chat_template(self.messages(question, target), tokenize=False,
                                                      add_generation_prompt=True, date_string=LLAMA_DATE)
        question = question.strip()
        if self.mode == "tag":
            return f"{question}\n<|out_lang_{target}|>\n"
        instruction, q_label, a_label, ex_q, ex_a = _texts(target)
        if self.mode == "system":
            return f"{instruction}\n\n{question}\n"
        return (f"{instruction}\n\n{q_label}: {ex_q}\n{a_label}: {ex_a}\n\n"
                f"{q_label}: {question}\n{a_label}:")

    def tokens(self, question: str, target: str) -> list[int]:
        text = self.text(question, target)
        # Chat templates already contain the BOS/special tokens; plain text gets the tokenizer's.
        return self.tokenizer(text, add_special_tokens=not self.use_chat)["input_ids"]

    def too_long(self, examples, targets, limit: int, margin: int = 8) -> list[tuple[object, str, int]]:
        """(example, answer language, prompt tokens) for the examples whose prompt exceeds `limit`
        tokens in some language of `targets` or in their own language. Questions are tokenised once;
        only those within `margin` tokens of the limit after the longest template are built exactly
        per language (a question and a template tokenise together to about the sum of their parts)."""
        if not examples:
            return []
        langs = tuple(dict.fromkeys(targets))
        overhead = {t: len(self.tokens("", t)) for t in set(langs) | {ex.language for ex in examples}}
        lengths = [len(x) for x in self.tokenizer([ex.question.strip() for ex in examples],
                                                  add_special_tokens=False)["input_ids"]]
        out = []
        for ex, n in zip(examples, lengths):
            own = langs + ((ex.language,) if ex.language not in langs else ())
            if n + max(overhead[t] for t in own) <= limit - margin:
                continue
            for t in own:
                length = len(self.tokens(ex.question, t))
                if length > limit:
                    out.append((ex, t, length))
                    break
        return out
