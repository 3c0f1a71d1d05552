//! Multi-turn chat: a conversation of system, user and assistant turns rendered with the Qwen2.5-VL
//! chat template (HF's: a default system turn when the first is not one; each turn
//! `<|im_start|>{role}\n{content}<|im_end|>\n`; then the assistant's open turn). A user turn's images
//! come before its text, as in the single-turn prompt (DESIGN.md 6). The whole conversation is
//! prefilled on every request: nothing is kept between requests.

use super::{ChatError, SYSTEM_PROMPT};

/// Who speaks a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Instructions to the assistant (only as the first turn; a default one otherwise).
    System,
    /// The person asking.
    User,
    /// The model's earlier answers.
    Assistant,
}

impl Role {
    /// The role's name in the chat template.
    pub fn name(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One turn of a conversation: its speaker, its text and (user turns only) the images that come before
/// the text. `I` is the image type of the API taking it (`RgbImage` for the engine, `PreparedImage` for
/// the pipeline).
#[derive(Debug, Clone, Copy)]
pub struct Turn<'a, I> {
    /// Who speaks it.
    pub role: Role,
    /// What is said.
    pub text: &'a str,
    /// Images before the text (user turns only).
    pub images: &'a [I],
}

impl<'a, I> Turn<'a, I> {
    /// A system turn.
    pub fn system(text: &'a str) -> Self {
        Turn {
            role: Role::System,
            text,
            images: &[],
        }
    }

    /// A user turn without images.
    pub fn user(text: &'a str) -> Self {
        Turn {
            role: Role::User,
            text,
            images: &[],
        }
    }

    /// An earlier answer.
    pub fn assistant(text: &'a str) -> Self {
        Turn {
            role: Role::Assistant,
            text,
            images: &[],
        }
    }

    /// This turn with `images` before its text (user turns only).
    pub fn with_images(self, images: &'a [I]) -> Self {
        Turn { images, ..self }
    }
}

/// Checks that `turns` make a conversation the assistant can answer: at least one turn, a system turn
/// only first, images only in user turns, no blank user text, and a user turn last. A single blank user
/// turn is [`ChatError::EmptyPrompt`], as for a one-turn prompt.
pub fn check_turns<I>(turns: &[Turn<'_, I>]) -> Result<(), ChatError> {
    let bad = |turn: usize, problem: &str| ChatError::Conversation {
        turn,
        problem: problem.to_string(),
    };
    let Some(last) = turns.last() else {
        return Err(ChatError::EmptyPrompt);
    };
    for (i, t) in turns.iter().enumerate() {
        if t.role == Role::System && i > 0 {
            return Err(bad(i, "a system turn can only be the first"));
        }
        if t.role != Role::User && !t.images.is_empty() {
            return Err(bad(i, "only user turns carry images"));
        }
        if t.role == Role::User && t.text.trim().is_empty() {
            return Err(match turns.len() {
                1 => ChatError::EmptyPrompt,
                _ => bad(i, "the user's text is empty"),
            });
        }
    }
    if last.role != Role::User {
        return Err(bad(
            turns.len() - 1,
            "the last turn must be the user's (the answer is the assistant's turn)",
        ));
    }
    Ok(())
}

/// The chat prompt of `turns` (`(role, content)`, content with any image tokens already in it), ready
/// for the assistant's answer.
pub fn conversation_template<'a>(turns: impl IntoIterator<Item = (Role, &'a str)>) -> String {
    let mut out = String::new();
    for (i, (role, content)) in turns.into_iter().enumerate() {
        if i == 0 && role != Role::System {
            push_turn(&mut out, Role::System, SYSTEM_PROMPT);
        }
        push_turn(&mut out, role, content);
    }
    out.push_str("<|im_start|>assistant\n");
    out
}

fn push_turn(out: &mut String, role: Role, content: &str) {
    out.push_str("<|im_start|>");
    out.push_str(role.name());
    out.push('\n');
    out.push_str(content);
    out.push_str("<|im_end|>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_user_turn_is_the_single_turn_template() {
        let text = "What is a bridge?";
        assert_eq!(
            conversation_template([(Role::User, text)]),
            super::super::chat_template(text)
        );
    }

    /// Written out as HF's Qwen2.5-VL template renders these messages.
    #[test]
    fn turns_render_as_the_qwen_template() {
        let got = conversation_template([
            (Role::System, "Be brief."),
            (Role::User, "Hi"),
            (Role::Assistant, "Hello."),
            (Role::User, "Name a bridge."),
        ]);
        let want = "<|im_start|>system\nBe brief.<|im_end|>\n\
                    <|im_start|>user\nHi<|im_end|>\n\
                    <|im_start|>assistant\nHello.<|im_end|>\n\
                    <|im_start|>user\nName a bridge.<|im_end|>\n\
                    <|im_start|>assistant\n";
        assert_eq!(got, want);
        let default_system = conversation_template([(Role::User, "Hi")]);
        assert!(default_system.starts_with(&format!(
            "<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\nHi"
        )));
    }

    #[test]
    fn malformed_conversations_name_the_turn() {
        let img = [()];
        let problem = |turns: &[Turn<'_, ()>]| match check_turns(turns) {
            Err(ChatError::Conversation { turn, problem }) => (turn, problem),
            other => panic!("expected a conversation error, got {other:?}"),
        };
        assert!(matches!(
            check_turns::<()>(&[]),
            Err(ChatError::EmptyPrompt)
        ));
        assert!(matches!(
            check_turns(&[Turn::<()>::user("  ")]),
            Err(ChatError::EmptyPrompt)
        ));
        let (turn, p) = problem(&[Turn::user("a"), Turn::system("s"), Turn::user("b")]);
        assert_eq!(turn, 1);
        assert!(p.contains("system"), "{p}");
        let (turn, p) = problem(&[Turn::user("a"), Turn::assistant("b").with_images(&img)]);
        assert_eq!(turn, 1);
        assert!(p.contains("images"), "{p}");
        let (turn, p) = problem(&[Turn::user("a"), Turn::assistant("b")]);
        assert_eq!(turn, 1);
        assert!(p.contains("last turn"), "{p}");
        let (turn, p) = problem(&[Turn::user(""), Turn::assistant("b"), Turn::user("c")]);
        assert_eq!(turn, 0);
        assert!(p.contains("empty"), "{p}");
        assert!(check_turns(&[
            Turn::system("s"),
            Turn::user("a").with_images(&img),
            Turn::assistant(""),
            Turn::user("b").with_images(&img),
        ])
        .is_ok());
    }
}
