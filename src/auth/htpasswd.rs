pub struct PasswordFile;
impl PasswordFile {
    pub fn parse(_t: &str) -> Result<PasswordFile, Vec<String>> {
        Ok(PasswordFile)
    }
}
pub fn set_user(_p: &std::path::Path, _u: &str, _pw: &[u8], _c: bool) -> anyhow::Result<bool> {
    Ok(false)
}
pub fn hash_bcrypt(_p: &[u8], _c: u32) -> String {
    String::new()
}
pub fn hash_apr1(_p: &[u8]) -> String {
    String::new()
}
pub fn set_user_hash(_p: &std::path::Path, _u: &str, _h: &str, _c: bool) -> anyhow::Result<bool> {
    Ok(false)
}
