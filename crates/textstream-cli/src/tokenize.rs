//! `textstream tokenize`: the ids of a text, as JSON.

use crate::args::TokenizeArgs;
use crate::load;

pub fn run(args: TokenizeArgs) -> anyhow::Result<()> {
    let tokenizer = load::tokenizer(&args.model)?;
    let ids = tokenizer.encode(&args.text, args.bos && tokenizer.add_bos)?;
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
}
