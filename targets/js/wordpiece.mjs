// BERT's uncased WordPiece tokenizer in JavaScript, for pages and Node scripts that feed a text
// model exported by edgefactory: the same ids as the Python side (Hugging Face `tokenizers`) for
// the tokenizer contract in the model's metadata (lower-case, strip accents, split punctuation
// and CJK characters, greedy longest-match WordPiece, [CLS] ... [SEP], truncate, pad with 0).
// Checked on every code point (as "a" + it + "b"): the ids differ on about 660 of 1.1 million,
// characters assigned by Unicode versions newer than the Rust library's tables (e.g. U+0897,
// U+2E55), which the page's JavaScript engine knows and the Python side treats as unknown.
//
//   import { WordPiece } from './wordpiece.mjs';
//   const tokenizer = new WordPiece(vocabText, { maxLength: 128 });
//   const ids = tokenizer.encode('some text');   // Int32Array of maxLength ids
//
// Node: node wordpiece.mjs VOCAB.txt MAX_LENGTH TEXTS.json   prints the ids of each text (JSON)

const MAX_WORD_CHARS = 100; // longer words become [UNK], as in BERT
// special tokens written in the text are those tokens (as in Hugging Face's tokenizers), case-sensitive
const SPECIAL = /(\[PAD\]|\[UNK\]|\[CLS\]|\[SEP\]|\[MASK\])/;

// as the Rust `tokenizers` BertNormalizer: control = Cc, Cf, Co, Cs (not unassigned code points,
// which become [UNK]); whitespace = Unicode White_Space (line and paragraph separators included)
const isControl = (ch) => ch !== '\t' && ch !== '\n' && ch !== '\r' && /^[\p{Cc}\p{Cf}\p{Co}\p{Cs}]$/u.test(ch);
const isWhitespace = (ch) => /^\p{White_Space}$/u.test(ch);

function isPunctuation(ch) {
  const cp = ch.codePointAt(0);
  // BERT treats every non-letter, non-digit ASCII symbol as punctuation ($, ^, `, ...)
  if ((cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) || (cp >= 123 && cp <= 126)) {
    return true;
  }
  return /^\p{P}$/u.test(ch);
}

function isCjk(cp) {
  return (cp >= 0x4e00 && cp <= 0x9fff) || (cp >= 0x3400 && cp <= 0x4dbf) || (cp >= 0x20000 && cp <= 0x2a6df)
    || (cp >= 0x2a700 && cp <= 0x2b73f) || (cp >= 0x2b740 && cp <= 0x2b81f) || (cp >= 0x2b920 && cp <= 0x2ceaf)
    || (cp >= 0xf900 && cp <= 0xfaff) || (cp >= 0x2f800 && cp <= 0x2fa1f);
}

// Clean (drop NUL, U+FFFD and control characters; whitespace to spaces), space out CJK
// characters, lower-case and strip accents, then split on whitespace and punctuation.
function basicTokens(text) {
  let cleaned = '';
  for (const ch of text) {
    const cp = ch.codePointAt(0);
    if (cp === 0 || cp === 0xfffd || isControl(ch)) continue;
    if (isWhitespace(ch)) cleaned += ' ';
    else if (isCjk(cp)) cleaned += ` ${ch} `;
    else cleaned += ch;
  }
  const words = [];
  for (const word of cleaned.split(' ')) {
    if (!word) continue;
    // lower-case one character at a time: no final-sigma rule (Python's side has none)
    const plain = Array.from(word, (c) => c.toLowerCase()).join('').normalize('NFD').replace(/\p{Mn}/gu, '');
    let current = '';
    for (const ch of plain) {
      if (isPunctuation(ch)) {
        if (current) words.push(current);
        words.push(ch);
        current = '';
      } else {
        current += ch;
      }
    }
    if (current) words.push(current);
  }
  return words;
}

export class WordPiece {
  constructor(vocabText, { maxLength = 128 } = {}) {
    const lines = vocabText.split(/\r?\n/);
    if (lines.length && lines[lines.length - 1] === '') lines.pop();
    this.vocab = new Map(lines.map((token, id) => [token, id]));
    for (const token of ['[PAD]', '[UNK]', '[CLS]', '[SEP]']) {
      if (!this.vocab.has(token)) throw new Error(`vocabulary has no ${token}`);
    }
    this.maxLength = maxLength;
  }

  wordPieces(word) {
    const chars = Array.from(word);
    if (chars.length > MAX_WORD_CHARS) return [this.vocab.get('[UNK]')];
    const pieces = [];
    for (let start = 0; start < chars.length;) {
      let end = chars.length;
      let found = null;
      while (start < end) {
        const piece = (start > 0 ? '##' : '') + chars.slice(start, end).join('');
        if (this.vocab.has(piece)) {
          found = this.vocab.get(piece);
          break;
        }
        end -= 1;
      }
      if (found === null) return [this.vocab.get('[UNK]')];
      pieces.push(found);
      start = end;
    }
    return pieces;
  }

  tokenIds(text) {
    return text.split(SPECIAL).flatMap((part, i) => (i % 2 === 1 && this.vocab.has(part)
      ? [this.vocab.get(part)]
      : basicTokens(part).flatMap((word) => this.wordPieces(word))));
  }

  encode(text) {
    const ids = new Int32Array(this.maxLength); // zeros: [PAD]
    const body = this.tokenIds(text).slice(0, this.maxLength - 2);
    ids[0] = this.vocab.get('[CLS]');
    ids.set(body, 1);
    ids[body.length + 1] = this.vocab.get('[SEP]');
    return ids;
  }
}

const invokedDirectly = typeof process !== 'undefined' && process.argv[1]
  && import.meta.url === new URL(`file://${process.argv[1]}`).href;
if (invokedDirectly) {
  const fs = await import('node:fs');
  const [vocabPath, maxLength, textsPath] = process.argv.slice(2);
  const tokenizer = new WordPiece(fs.readFileSync(vocabPath, 'utf8'), { maxLength: Number(maxLength) });
  const texts = JSON.parse(fs.readFileSync(textsPath, 'utf8'));
  console.log(JSON.stringify(texts.map((text) => Array.from(tokenizer.encode(text)))));
}
