"""Mandarin tone sandhi on pypinyin TONE3 syllables, word by word (jieba words with POS tags).

Order: 一 and 不 (they look at the next syllable's dictionary tone), then neutral tones (particles,
suffixes, reduplication, a list of words with a neutral last syllable), then third-tone sandhi inside
words and short prosodic groups of words (3-3 -> 2-3), and last the erhua 儿 taking the tone before it.
"""

from __future__ import annotations

from functools import lru_cache

# words whose last syllable is neutral in standard speech (dictionary tone otherwise)
NEUTRAL_LAST = set("""
东西 先生 朋友 意思 事情 时候 知道 明白 告诉 喜欢 衣服 休息 认识 关系 清楚 麻烦
豆腐 舒服 漂亮 消息 地方 多少 玻璃 葡萄 萝卜 眼睛 耳朵 脑袋 丈夫 姑娘 窗户 便宜
结实 聪明 客气 暖和 凉快 热闹 商量 收拾 打扮 打听 打算 学生 学问 月亮 名字 尾巴
嘴巴 下巴 石头 木头 馒头 枕头 舌头 念头 骨头 指头 苦头 甜头 里头 外头 前头 后头
上头 下头 头发 骆驼 喇叭 琵琶 蘑菇 芝麻 黄瓜 南瓜 哆嗦 唠叨 嘀咕 咳嗽 吆喝 招呼
吩咐 嘱咐 应付 糊涂 机灵 厉害 利索 快活 自在 踏实 老实 故事 本事 东家 亲家 人家
大夫 师父 师傅 媳妇 女婿 妯娌 祖宗 亲戚 伙计 徒弟 兄弟 姐夫 妹夫 弟弟 妹妹 哥哥
姐姐 爸爸 妈妈 爷爷 奶奶 姥姥 公公 婆婆 叔叔 舅舅 伯伯 太太 宝宝 早上 晚上 身上
地上 天上 头上 手上 路上 心上 家里 夜里 心里 手里 屋里 城里 这么 那么 什么 怎么
多么 要么 这个 那个 哪个 我们 你们 他们 她们 它们 咱们 人们 孩子 儿子 日子 房子
桌子 椅子 杯子 被子 鼻子 脖子 肚子 裤子 帽子 袜子 鞋子 盘子 筷子 勺子 箱子 柜子
院子 村子 镜子 扇子 句子 样子 法子 影子 胖子 瘦子 傻子 疯子 骗子 本子 竹子 种子
叶子 果子 李子 桃子 橘子 柿子 饺子 包子 粽子 虫子 兔子 猴子 狮子 蚊子 鸽子 燕子
辫子 嗓子 身子 脑子 性子 日头 嫁妆 衣裳 见识 含糊 似的 薄荷 风筝 篱笆 钥匙 力气
脾气 福气 运气 和气 小气 稀罕 寒碜 馄饨 累赘 胳膊 指甲 巴掌 眉毛 云彩 月饼 烧饼
点心 包袱 行李 生意 买卖 动静 规矩 道理 体面 难为 委屈 折腾 琢磨 张罗 溜达 合同
秀才 状元 相声 队伍 部分 扫帚 笤帚 苍蝇 狐狸 刺猬 石榴 枇杷 木匠 铁匠
""".split())

# reduplicated words that keep both full tones
_NOT_NEUTRAL = set("天天 常常 刚刚 渐渐 往往 偏偏 慢慢 好好 明明 仅仅 纷纷 处处 人人 年年 家家 个个 星星 "
                   "匆匆 悄悄 轻轻 静静 深深 远远 高高 早早 连连 频频 时时 默默 统统 通通".split())

_PARTICLES = set("吧呢啊呐嘛吗呗啦咯喽啰哟呀哇")
_NUMERIC = set("零一二三四五六七八九十百千万亿两")
_DIGIT_CHARS = set("零〇一二三四五六七八九")
_DIRECTIONAL_FIRST = set("上下进出回过起开")


def _tone(syllable: str) -> str:
    return syllable[-1] if syllable and syllable[-1] in "12345" else "5"


def _set_tone(syllable: str, tone: str) -> str:
    body = syllable[:-1] if syllable and syllable[-1] in "12345" else syllable
    return body + tone


@lru_cache(maxsize=1)
def _freq() -> dict:
    import jieba

    jieba.initialize()
    return jieba.dt.FREQ


def _is_word(text: str) -> bool:
    return _freq().get(text, 0) > 0


def _yi_bu(words: list[tuple[str, str]], syllables: list[list[str]]) -> None:
    chars = "".join(w for w, _ in words)
    flat = [(wi, si) for wi, pys in enumerate(syllables) for si in range(len(pys))]
    original = [syllables[wi][si] for wi, si in flat]
    for k, (wi, si) in enumerate(flat):
        ch = chars[k]
        if ch not in "一不":
            continue
        prev_ch = chars[k - 1] if k > 0 else ""
        next_ch = chars[k + 1] if k + 1 < len(chars) else ""
        next_tone = _tone(original[k + 1]) if k + 1 < len(chars) else ""
        if ch == "不":
            if prev_ch and prev_ch == next_ch:
                tone = "5"  # 好不好, 去不去
            elif len(words[wi][0]) == 3 and si == 1:
                tone = "5"  # potential complements: 看不懂, 对不起, 来不及
            elif next_tone == "4":
                tone = "2"
            else:
                tone = "4"
            syllables[wi][si] = "bu" + tone
            continue
        after_next = chars[k + 2] if k + 2 < len(chars) else ""
        if prev_ch and prev_ch == next_ch and prev_ch not in _NUMERIC:
            tone = "5"  # 看一看
        elif (not next_ch or prev_ch == "第" or prev_ch in _NUMERIC or next_ch in _DIGIT_CHARS
              or (si == len(syllables[wi]) - 1 and si > 0)):
            tone = "1"  # end of phrase or word (统一, 唯一), ordinals, digit strings, 十一
        elif next_ch == "点" and after_next in _DIGIT_CHARS:
            tone = "1"  # 一点五
        elif next_ch in "日号" and prev_ch == "月":
            tone = "1"  # 一月一日
        elif next_ch == "月" and (not after_next or after_next in _NUMERIC or after_next in "份底初中"):
            tone = "1"  # 一月 (January)
        elif next_tone in ("4", "5"):
            tone = "2"
        else:
            tone = "4"
        syllables[wi][si] = "yi" + tone


def _neutral(words: list[tuple[str, str]], syllables: list[list[str]]) -> None:
    for wi, (word, pos) in enumerate(words):
        pys = syllables[wi]
        n = len(word)
        if word in NEUTRAL_LAST and n >= 2:
            pys[-1] = _set_tone(pys[-1], "5")
        if n == 1:
            if word in _PARTICLES and pos in ("y", "e", "zg", "ul", "x") or (word in "吧呢嘛吗呗啦咯" and pos != "v"):
                pys[0] = _set_tone(pys[0], "5")
            elif word == "得" and _must_dei(words, wi):
                pys[0] = "dei3"
            elif word in "的地得" and pos.startswith("u"):
                pys[0] = "de5"
            elif word in "了着过" and pos in ("ul", "uz", "ug"):
                pys[0] = _set_tone(pys[0], "5")
            continue
        if n == 3 and word[1] == "得" and pos[:1] in ("l", "v", "a"):
            pys[1] = "de5"  # complement of degree or result: 跑得快, 说得好
        if word[0] == "得" and pos.startswith("v") and wi > 0 and words[wi - 1][1].startswith("r"):
            pys[0] = "dei3"  # 你得去
        if word[-1] == "们" and n <= 3:
            pys[-1] = _set_tone(pys[-1], "5")
        if (n >= 2 and word[-1] in "来去" and word[-2] in _DIRECTIONAL_FIRST and pos.startswith("v")):
            pys[-1] = _set_tone(pys[-1], "5")
        if n == 2 and word[0] == word[1] and word not in _NOT_NEUTRAL and pos[:1] in ("n", "v"):
            pys[1] = _set_tone(pys[1], "5")  # 妈妈, 看看


def _must_dei(words: list[tuple[str, str]], wi: int) -> bool:
    """得 as "must" (dei3): after a pronoun or name and before a verb, as in 我得走了."""
    before = words[wi - 1][1] if wi > 0 else ""
    after = words[wi + 1][1] if wi + 1 < len(words) else ""
    return before[:1] in ("r", "n") and after[:1] == "v"


def _units(word: str) -> list[tuple[int, int]]:
    n = len(word)
    if n <= 2:
        return [(0, n)]
    if n == 3:
        if _is_word(word[:2]) or not _is_word(word[1:]):
            return [(0, 2), (2, 3)]
        return [(0, 1), (1, 3)]
    if n == 4:
        return [(0, 2), (2, 4)]
    return [(i, min(i + 2, n)) for i in range(0, n, 2)]


def _three_in_word(word: str, pys: list[str]) -> None:
    units = _units(word)
    for start, end in units:
        if end - start == 2 and _tone(pys[start]) == "3" and _tone(pys[start + 1]) == "3":
            pys[start] = _set_tone(pys[start], "2")
    for (_, a_end), (b_start, _) in zip(units, units[1:]):
        if _tone(pys[a_end - 1]) == "3" and _tone(pys[b_start]) == "3":
            pys[a_end - 1] = _set_tone(pys[a_end - 1], "2")


def _three_across(words: list[tuple[str, str]], syllables: list[list[str]]) -> None:
    group = len(words[0][0]) if words else 0
    for wi in range(1, len(words)):
        a, b = syllables[wi - 1], syllables[wi]
        size = len(words[wi][0])
        if a and b and _tone(a[-1]) == "3" and _tone(b[0]) == "3" and group + size <= 3:
            a[-1] = _set_tone(a[-1], "2")
            group += size
        else:
            group = size


# words ending in 儿 that keep it as a full syllable "er2" (a child, a son...), not the erhua suffix
_NOT_ERHUA = set("女儿 男儿 婴儿 幼儿 孤儿 少儿 侄儿 孙儿 患儿 健儿 胎儿 混血儿 新生儿 婴幼儿 宠儿 妻儿 我儿 一儿".split())


def _erhua(words: list[tuple[str, str]], syllables: list[list[str]]) -> None:
    """Word-final 儿 as the erhua suffix stays its own syllable (one per character for BERT) but is
    said with the tone of the syllable before it: 一会儿 -> hui4 er4, 哪儿 -> na3 er3."""
    for (word, pos), pys in zip(words, syllables):
        if len(word) < 2 or word[-1] != "儿" or not pys[-1].startswith("er"):
            continue
        if pys[-1] == "er1":
            pys[-1] = "er2"
        if word in _NOT_ERHUA or pos in ("a", "j", "nr") or pys[-1] not in ("er2", "er5"):
            continue
        pys[-1] = "er" + _tone(pys[-2])


def apply_sandhi(words: list[tuple[str, str]], syllables: list[list[str]]) -> list[list[str]]:
    """`words` are (word, pos) for one stretch without punctuation, `syllables` their pypinyin TONE3
    syllables (one per character). Returns the syllables with sandhi applied (lists are modified)."""
    _yi_bu(words, syllables)
    _neutral(words, syllables)
    for (word, _), pys in zip(words, syllables):
        _three_in_word(word, pys)
    _three_across(words, syllables)
    _erhua(words, syllables)
    return syllables
